//! Human sizes and durations in configuration files and on the command line: `10G`, `512M`,
//! `1h`, `30m`; and their serde forms for configuration fields.

/// Parses a byte size: a number with an optional binary suffix `K`, `M`, `G`, `T` (`KiB`,
/// `MB`, ... are accepted too and mean the same powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, suffix) = split_number(text).ok_or_else(|| format!("{text:?} is not a size such as 10G"))?;
    let shift = match suffix
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown size unit {suffix:?} (use K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with a unit `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) =
        split_number(text).ok_or_else(|| format!("{text:?} is not a duration such as 1h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: unknown duration unit (use s, m, h or d)")),
    };
    let seconds = number
        .checked_mul(seconds)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(std::time::Duration::from_secs(seconds))
}

/// Splits `10G` into `(10, "G")`; `None` without a leading number.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, rest) = text.split_at(split);
    Some((number.parse().ok()?, rest))
}

/// Deserializes an optional size field from its text (`"50G"`).
pub fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_size(&text).map(Some).map_err(serde::de::Error::custom)
}

/// Deserializes an optional duration field from its text (`"10m"`).
pub fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("G").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(std::time::Duration::ZERO));
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("300000000000000000d").is_err());
    }
}
