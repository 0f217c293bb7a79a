//! The container images start: built by `cargo xtask images` (buildah, FROM
//! scratch) from the binaries `cargo test` already built, then run with
//! podman. A private containers-storage root per run keeps them away from
//! other users' images and is deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;

use install_tests::*;

struct Storage {
    dir: PathBuf,
}

impl Storage {
    fn new() -> Self {
        // Short: podman refuses a run root longer than 50 characters.
        let dir = std::env::temp_dir().join(unique_name("mkb-img"));
        std::fs::create_dir_all(&dir).unwrap();
        // podman's default ulimits cannot be set in this sandbox (guide: containers.md).
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Self { dir }
    }

    fn root_args(&self) -> [String; 4] {
        [
            "--root".into(),
            self.dir.join("root").display().to_string(),
            "--runroot".into(),
            self.dir.join("runroot").display().to_string(),
        ]
    }

    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(self.root_args());
        cmd
    }

    fn run(&self, image: &str, args: &[&str], volume: Option<&Path>) -> std::process::Output {
        let mut cmd = self.podman();
        cmd.args(["run", "--rm", "--network", "host"]);
        if let Some(dir) = volume {
            cmd.arg("--volume")
                .arg(format!("{}:/config:ro", dir.display()));
        }
        cmd.arg(image).args(args);
        output(&mut cmd, None)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // vfs layers are full copies; unmount leftovers, then drop the store.
        let _ = output(self.podman().args(["rm", "--all", "--force"]), None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn images_start_and_run_as_non_root_without_a_shell() {
    let storage = Storage::new();
    let tag = "test";
    // Needs the binaries before building the images from them.
    let operator = cargo_bin("operator");
    cargo_bin("bridge-runtime");
    let started = std::time::Instant::now();
    run_ok(
        Command::new(var("TESTENV_CTL"))
            .args(["images", "--tag", tag, "--bin-dir"])
            .arg(operator.parent().unwrap())
            .args(storage.root_args()),
        None,
    );
    eprintln!("images built in {:.0}s", started.elapsed().as_secs_f64());
    let bridge = format!("localhost/mqtt-kafka-bridge:{tag}");
    let op = format!("localhost/mqtt-kafka-operator:{tag}");

    let out = storage.run(&bridge, &["--version"], None);
    assert!(out.status.success(), "{bridge} --version: {}", text(&out));
    assert!(
        text(&out).contains(env!("CARGO_PKG_VERSION")),
        "version: {}",
        text(&out)
    );

    // `check` on the configuration the operator generates for an example bridge.
    let example: crds::MqttKafkaBridge = serde_yaml::from_str(
        &std::fs::read_to_string(workspace().join("deploy/examples/current-sensor.yaml")).unwrap(),
    )
    .unwrap();
    let config = operator::build::config::bridge_config(&example.spec, 0);
    let dir = storage.dir.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bridge.yaml"),
        serde_yaml::to_string(&config).unwrap(),
    )
    .unwrap();
    let out = storage.run(
        &bridge,
        &[
            "check",
            "--config",
            "/config/bridge.yaml",
            "--mqtt-topic",
            "corrente",
            "--payload",
            "1.5",
        ],
        Some(&dir),
    );
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        text(&out).contains("corrente"),
        "check output: {}",
        text(&out)
    );

    let out = storage.run(&op, &["--help"], None);
    assert!(out.status.success(), "{op} --help: {}", text(&out));
    assert!(
        text(&out).contains("--bridge-image"),
        "help: {}",
        text(&out)
    );

    for image in [&bridge, &op] {
        let user = run_ok(
            storage
                .podman()
                .args(["image", "inspect", "--format", "{{.Config.User}}", image]),
            None,
        );
        assert_eq!(
            user.trim(),
            "65532:65532",
            "{image} runs as a numeric non-root user"
        );
        let out = output(
            storage.podman().args([
                "run",
                "--rm",
                "--entrypoint",
                "/bin/sh",
                image,
                "-c",
                "true",
            ]),
            None,
        );
        assert!(!out.status.success(), "{image} has no shell");
    }
}
