//! The README's annotated bridge is accepted by the apiserver (CRD schema
//! and CEL rules), so the documentation cannot drift from the API.

use e2e::{Servers, run, workspace};

/// The first ```yaml block after `heading`.
fn yaml_after(readme: &str, heading: &str) -> String {
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"))
        .1;
    let block = section
        .split_once("```yaml\n")
        .expect("a yaml block")
        .1
        .split_once("```")
        .expect("closed yaml block")
        .0;
    block.to_owned()
}

#[test]
fn the_annotated_bridge_is_accepted_by_the_apiserver() {
    let s = Servers::from_env().unwrap();
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let yaml = yaml_after(&readme, "## A bridge, annotated");
    assert!(yaml.contains("kind: MqttKafkaBridge"), "{yaml}");
    let out = run(
        s.kubectl()
            .args(["apply", "--dry-run=server", "-n", "default", "-f", "-"]),
        Some(&yaml),
    )
    .unwrap();
    assert!(
        out.contains("created (server dry run)") || out.contains("configured"),
        "{out}"
    );
}
