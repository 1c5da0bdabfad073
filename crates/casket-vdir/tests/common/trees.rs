//! Two deterministic trees that share their directories and half their files, for the
//! import bench and tests: the second has other content, flipped executable bits, new names,
//! new directories, files replaced by symlinks and retargeted per-directory symlinks.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How big the trees are: `tops` top directories of `mids` each of `leaves`, and `files`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub tops: usize,
    pub mids: usize,
    pub leaves: usize,
    pub files: usize,
}

fn directories(shape: Shape) -> Vec<String> {
    let mut out = Vec::new();
    for t in 0..shape.tops {
        out.push(format!("t{t}"));
        for m in 0..shape.mids {
            out.push(format!("t{t}/m{m}"));
            for l in 0..shape.leaves {
                out.push(format!("t{t}/m{m}/l{l}"));
            }
        }
    }
    out
}

/// 1 to 4 KiB of bytes, different for every `(i, variant)`.
fn content(i: usize, variant: u64) -> Vec<u8> {
    let len = 1024 + (i * 7919 + variant as usize * 131) % 3073;
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (variant + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8], executable: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn symlink(target: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// The first tree (`second == false`) or the second (see the module documentation).
pub fn write_tree(root: &Path, shape: Shape, second: bool) {
    let dirs = directories(shape);
    for (d, dir) in dirs.iter().enumerate() {
        let target = if second && d % 2 == 0 {
            "../link".to_owned()
        } else {
            format!("f{d:05}")
        };
        symlink(&target, &root.join(dir).join("link"));
    }
    for i in 0..shape.files {
        let dir = root.join(&dirs[i % dirs.len()]);
        let executable = i % 13 == 0;
        if !second {
            write(&dir.join(format!("f{i:05}")), &content(i, 0), executable);
            continue;
        }
        match i % 10 {
            0..=4 => write(&dir.join(format!("f{i:05}")), &content(i, 0), executable),
            5 => write(&dir.join(format!("f{i:05}")), &content(i, 1), executable),
            6 => write(&dir.join(format!("f{i:05}")), &content(i, 0), !executable),
            7 | 8 => {
                write(&dir.join(format!("g{i:05}")), &content(i, 1), executable);
                if i % 20 == 7 {
                    symlink(&format!("g{i:05}"), &dir.join(format!("f{i:05}")));
                }
            }
            _ => {
                let fresh = root.join(format!("fresh{}/s{}", (i / 10) % 4, (i / 40) % 5));
                write(&fresh.join(format!("g{i:05}")), &content(i, 1), executable);
            }
        }
    }
}
