//! The deploy examples and the guides' links.

use super::*;

#[test]
fn the_deploy_examples_hold_together() {
    // The example configuration passes `qoima config check` as shipped, with no callers (so no
    // token anyone could know) and every file outside the data directory.
    let (ok, out) = cli(&["config", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy/qoima.toml")]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "ok (0 callers, 5 purposes, data_dir /var/lib/qoima/data, listen http://127.0.0.1:8750, root key not present on this machine"
        ),
        "{out}"
    );
    // The unit runs that configuration, hardened as the operator guide says.
    let unit = read_doc("docs/deploy/qoima.service");
    for line in [
        "User=qoima",
        "ExecStart=/usr/local/bin/qoima serve --config /etc/qoima/qoima.toml",
        "StateDirectory=qoima",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitCORE=0",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
        "RestartPreventExitStatus=2 3",
    ] {
        assert!(unit.lines().any(|l| l == line), "docs/deploy/qoima.service lacks `{line}`");
    }
    let toml = read_doc("docs/deploy/qoima.toml");
    assert!(toml.contains("file = \"/etc/qoima/root.key\"") && toml.contains("data_dir        = \"/var/lib/qoima/data\""));
}

/// GitHub's anchor for a heading.
pub(super) fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_links_of_the_guides_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "docs/getting-started.md", "docs/integrator-guide.md", "docs/operator-guide.md", "docs/threat-model.md"] {
        let text = read_doc(doc);
        let base = root.join(doc).parent().expect("a directory").to_path_buf();
        let mut in_code = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for link in line.split("](").skip(1) {
                let target = link.split(')').next().unwrap_or_default();
                if target.starts_with("http") || target.is_empty() {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() { root.join(doc) } else { base.join(file) };
                assert!(path.exists(), "{doc}: link to {target}: no such file");
                if !anchor.is_empty() {
                    let linked = std::fs::read_to_string(&path).unwrap();
                    let mut fenced = false;
                    let anchors: Vec<String> = linked
                        .lines()
                        .filter(|l| {
                            fenced ^= l.starts_with("```");
                            !fenced && l.starts_with('#')
                        })
                        .map(|h| slug(h.trim_start_matches('#')))
                        .collect();
                    assert!(anchors.iter().any(|a| a == anchor), "{doc}: link to {target}: no heading with that anchor in {anchors:?}");
                }
            }
        }
    }
}
