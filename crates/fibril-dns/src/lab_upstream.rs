//! The lab's upstream resolver configuration (lab/manifests/upstream-dns:
//! the Corefile, the `example.test` zone, reverse names of the router's
//! loopback networks and a stub root zone), built into the binary so `fibril
//! lab up` can start it on the router without a source tree:
//! `fibril dns --lab-upstream DIR` writes these files to DIR and serves them.

use std::path::{Path, PathBuf};

/// (file name, contents), the Corefile first.
pub const FILES: &[(&str, &str)] = &[
    (
        "Corefile",
        include_str!("../../../lab/manifests/upstream-dns/Corefile"),
    ),
    (
        "example.test.zone",
        include_str!("../../../lab/manifests/upstream-dns/example.test.zone"),
    ),
    (
        "10.10.in-addr.arpa.zone",
        include_str!("../../../lab/manifests/upstream-dns/10.10.in-addr.arpa.zone"),
    ),
    (
        "root.zone",
        include_str!("../../../lab/manifests/upstream-dns/root.zone"),
    ),
];

/// Writes [`FILES`] into `dir` (created if missing) and returns the
/// Corefile's path.
pub fn write_to(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in FILES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir.join("Corefile"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn built_in_files_load() {
        let dir =
            std::env::temp_dir().join(format!("fibril-dns-lab-upstream-{}", std::process::id()));
        let cf_path = write_to(&dir).unwrap();
        let cf = crate::parse_corefile(&std::fs::read_to_string(&cf_path).unwrap()).unwrap();
        let mut zones = 0;
        for b in &cf.servers {
            assert_eq!(b.port, 53);
            for f in &b.files {
                for z in &f.zones {
                    crate::file::Zone::load(&dir.join(&f.path), z).unwrap();
                    zones += 1;
                }
            }
        }
        assert_eq!(zones, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
