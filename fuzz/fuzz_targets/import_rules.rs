//! Random source and destination trees (colliding names, any symlink targets, explicit lists):
//! a CAS-to-CAS import never panics, is all-or-nothing, is deterministic, and stores a
//! complete tree.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use casket_model::{Digest, DigestFunction, Directory as Message, EntryName, FileNode, Node, SymlinkNode};
use casket_store::{BlobStore, BlobStoreExt, MemoryStore};
use casket_vdir::{CasDirectory, Directory, ImportFilter, ImportOptions};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Item {
    File { path: Vec<u8>, executable: bool, content: u8 },
    Dir { path: Vec<u8> },
    Link { path: Vec<u8>, target: String },
}

#[derive(Arbitrary, Debug)]
struct Input {
    src: Vec<Item>,
    dest: Vec<Item>,
    list: Option<Vec<String>>,
    ignore_missing: bool,
}

enum Tree {
    File(u8, bool),
    Link(String),
    Dir(BTreeMap<String, Tree>),
}

/// Few names, so that paths collide.
fn components(path: &[u8]) -> Vec<String> {
    path.iter().take(3).map(|b| ["a", "b", "c"][usize::from(*b % 3)].to_owned()).collect()
}

fn insert(dir: &mut BTreeMap<String, Tree>, path: &[String], leaf: Tree) {
    let Some((name, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        dir.insert(name.clone(), leaf);
        return;
    }
    let child = dir.entry(name.clone()).or_insert_with(|| Tree::Dir(BTreeMap::new()));
    if !matches!(child, Tree::Dir(_)) {
        *child = Tree::Dir(BTreeMap::new());
    }
    if let Tree::Dir(child) = child {
        insert(child, rest, leaf);
    }
}

async fn store_tree(store: &dyn BlobStore, dir: &BTreeMap<String, Tree>) -> Digest {
    let mut message = Message::new();
    for (name, tree) in dir {
        let node = match tree {
            Tree::File(content, executable) => {
                let data = bytes::Bytes::from(vec![*content; usize::from(*content % 5)]);
                let digest = store.put_bytes(DigestFunction::Sha256, data).await.expect("memory store");
                Node::File(FileNode { digest, executable: *executable, properties: Default::default() })
            }
            Tree::Link(target) => match SymlinkNode::new(target.clone()) {
                Some(link) => Node::Symlink(link),
                None => continue,
            },
            Tree::Dir(child) => Node::Directory(Box::pin(store_tree(store, child)).await),
        };
        message.insert(EntryName::new(name.clone()).expect("valid name"), node);
    }
    store
        .put_bytes(DigestFunction::Sha256, message.encode().into())
        .await
        .expect("memory store")
}

async fn build(store: &dyn BlobStore, items: &[Item]) -> Digest {
    let mut root = BTreeMap::new();
    for item in items {
        match item {
            Item::File { path, executable, content } => {
                insert(&mut root, &components(path), Tree::File(*content, *executable))
            }
            Item::Dir { path } => insert(&mut root, &components(path), Tree::Dir(BTreeMap::new())),
            Item::Link { path, target } => insert(&mut root, &components(path), Tree::Link(target.clone())),
        }
    }
    store_tree(store, &root).await
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
        let src = build(store.as_ref(), &input.src).await;
        let dest = build(store.as_ref(), &input.dest).await;
        let filter = match &input.list {
            Some(list) => ImportFilter::Paths(list.clone()),
            None => ImportFilter::All,
        };
        let options = ImportOptions { ignore_missing: input.ignore_missing, link: false };
        let source = CasDirectory::open(store.clone(), &src).await.expect("stored source");
        let target = CasDirectory::open(store.clone(), &dest).await.expect("stored destination");
        match target.import_files(&source, &filter, &options).await {
            Err(_) => assert_eq!(target.digest().await.expect("digest"), dest, "a failed import changes nothing"),
            Ok(report) => {
                let result = target.digest().await.expect("digest");
                let again = CasDirectory::open(store.clone(), &dest).await.expect("stored destination");
                let second = again.import_files(&source, &filter, &options).await.expect("same import");
                assert_eq!(second, report, "the same import reports the same");
                assert_eq!(again.digest().await.expect("digest"), result, "the same import gives the same tree");
                CasDirectory::open(store.clone(), &result).await.expect("the result is stored completely");
            }
        }
    });
});
