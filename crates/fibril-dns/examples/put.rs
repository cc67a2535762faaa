//! Writes the objects of manifest files (or stdin, `-`) into a cluster store
//! at an etcd URL, as they are (no controller runs): a way to feed a
//! standalone `fibril dns --etcd URL` without a lab.
//!
//! ```text
//! cargo run -p fibril-dns --example put -- http://127.0.0.1:2379 lab/manifests/coredns.yaml
//! ```

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use fibril_store::{EtcdStore, EtcdStoreOptions, SharedStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .context("usage: put ETCD_URL FILE|- [FILE...]")?;
    let store: SharedStore =
        Arc::new(EtcdStore::connect(vec![url.clone()], EtcdStoreOptions::default()).await?);
    for f in args {
        let text = if f == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(&f).with_context(|| f.clone())?
        };
        for o in fibril_api::parse_manifests(&text).with_context(|| f.clone())? {
            let (key, value) = o.to_store().with_context(|| format!("{f}: {}", o.name()))?;
            store
                .put(&key, value)
                .await
                .with_context(|| format!("put {key:?}"))?;
            println!(
                "{} {}/{} stored",
                o.kind(),
                o.namespace().unwrap_or("-"),
                o.name()
            );
        }
    }
    Ok(())
}
