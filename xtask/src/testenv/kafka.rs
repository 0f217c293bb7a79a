//! Apache Kafka, one KRaft node (broker and controller in one process) with
//! PLAINTEXT, SASL_PLAINTEXT (PLAIN and SCRAM-SHA-512) and SASL_SSL (SCRAM-SHA-512) listeners.
//!
//! Authorization is on (`StandardAuthorizer`) so fault tests can take rights
//! away, but every principal other tests use is a super user and stays
//! unrestricted: `User:ANONYMOUS` (the PLAINTEXT listener, which is also the
//! inter-broker listener, and the controller listener), `bridge-plain` and
//! `bridge-scram`. Only `bridge-limited` (SCRAM-SHA-512 and -256) is subject
//! to ACLs, and it has none until a test grants them with [`acl`]
//! (`cargo xtask testenv kafka-acl`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::certs::Pki;
use super::process::{Ready, Server};
use crate::toolchain::Toolchain;

pub struct Ports {
    pub plaintext: u16,
    pub sasl_plaintext: u16,
    pub sasl_ssl: u16,
    pub controller: u16,
}

/// Writes the configuration, formats the storage (creating the SCRAM user) and
/// returns the server definition.
pub fn configure(
    dir: &Path,
    tools: &Toolchain,
    pki: &Pki,
    ports: &Ports,
    vars: &mut BTreeMap<String, String>,
) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let plain_user = "bridge-plain";
    let plain_password = super::random_secret();
    let scram_user = "bridge-scram";
    let scram_password = super::random_secret();
    let limited_user = LIMITED_USER;
    let limited_password = super::random_secret();
    let data = dir.join("data");
    let properties = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{c}\n\
         controller.listener.names=CONTROLLER\n\
         listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{sp},SASL_SSL://127.0.0.1:{ss},CONTROLLER://127.0.0.1:{c}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{sp},SASL_SSL://127.0.0.1:{ss}\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={data}\n\
         # Tests create their topics; a typo must not silently create one.\n\
         auto.create.topics.enable=false\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=10\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         # ACLs apply only to principals that are not listed here ({limited_user}).\n\
         authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
         super.users=User:ANONYMOUS;User:{plain_user};User:{scram_user}\n\
         listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
         listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{plain_user}=\"{plain_password}\";\n\
         listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.location={keystore}\n\
         ssl.endpoint.identification.algorithm=\n",
        c = ports.controller,
        p = ports.plaintext,
        sp = ports.sasl_plaintext,
        ss = ports.sasl_ssl,
        data = data.display(),
        keystore = pki.server_keystore.display(),
    );
    let config = dir.join("server.properties");
    std::fs::write(&config, properties)?;
    let log4j = dir.join("log4j2.properties");
    std::fs::write(
        &log4j,
        "status = warn\nappender.out.type = Console\nappender.out.name = OUT\n\
         appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = OUT\n\
         logger.kafka.name = kafka\nlogger.kafka.level = INFO\n\
         logger.state.name = state.change.logger\nlogger.state.level = WARN\n",
    )?;

    let classpath = format!("{}/*", tools.kafka_libs.display());
    let jvm = |main: &str| -> Vec<String> {
        vec![
            "-Xms256m".into(),
            "-Xmx768m".into(),
            "-XX:+UseG1GC".into(),
            "-Djava.awt.headless=true".into(),
            format!("-Dlog4j2.configurationFile={}", log4j.display()),
            "-cp".into(),
            classpath.clone(),
            main.into(),
        ]
    };

    // Format the storage once: a cluster id and the SCRAM credential.
    let cluster_id = kafka_cluster_id(super::random_bytes());
    let mut format = Command::new(&tools.java);
    format
        .args(jvm("kafka.tools.StorageTool"))
        .args([
            "format",
            "--ignore-formatted",
            "--cluster-id",
            &cluster_id,
            "--config",
        ])
        .arg(&config)
        .args([
            "--add-scram",
            &format!("SCRAM-SHA-512=[name=\"{scram_user}\",password=\"{scram_password}\"]"),
            // The same user and password for SCRAM-SHA-256 (SASL_PLAINTEXT listener).
            "--add-scram",
            &format!("SCRAM-SHA-256=[name=\"{scram_user}\",password=\"{scram_password}\"]"),
            // The user whose rights fault tests grant and revoke; none by default.
            "--add-scram",
            &format!("SCRAM-SHA-512=[name=\"{limited_user}\",password=\"{limited_password}\"]"),
            "--add-scram",
            &format!("SCRAM-SHA-256=[name=\"{limited_user}\",password=\"{limited_password}\"]"),
        ]);
    let out = format.output().context("run Kafka StorageTool")?;
    if !out.status.success() {
        bail!(
            "formatting Kafka storage failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    let mut args = jvm("kafka.Kafka");
    args.push(config.display().to_string());
    vars.insert(
        "KAFKA_BOOTSTRAP".into(),
        format!("127.0.0.1:{}", ports.plaintext),
    );
    vars.insert(
        "KAFKA_SASL_BOOTSTRAP".into(),
        format!("127.0.0.1:{}", ports.sasl_plaintext),
    );
    vars.insert(
        "KAFKA_SSL_BOOTSTRAP".into(),
        format!("127.0.0.1:{}", ports.sasl_ssl),
    );
    vars.insert("KAFKA_PLAIN_USER".into(), plain_user.into());
    vars.insert("KAFKA_PLAIN_PASSWORD".into(), plain_password);
    vars.insert("KAFKA_SCRAM_USER".into(), scram_user.into());
    vars.insert("KAFKA_SCRAM_PASSWORD".into(), scram_password);
    vars.insert("KAFKA_LIMITED_USER".into(), limited_user.into());
    vars.insert("KAFKA_LIMITED_PASSWORD".into(), limited_password);
    vars.insert("KAFKA_CA_FILE".into(), pki.ca_cert.display().to_string());
    Ok(Server {
        name: "kafka".into(),
        program: tools.java.clone(),
        args,
        env: vec![],
        ready: Ready::PortsAndLog(
            vec![ports.plaintext, ports.sasl_plaintext, ports.sasl_ssl],
            "Kafka Server started".into(),
        ),
        stop_timeout_secs: 30,
        pid: None,
    })
}

/// The SCRAM user that has no rights until a test grants them.
pub const LIMITED_USER: &str = "bridge-limited";

/// How long a granted or revoked ACL may take to show at the broker.
const ACL_APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `cargo xtask testenv kafka-acl grant|revoke --principal User:… <resource> --operation …`:
/// changes ALLOW ACLs and returns once the broker reports the change
/// (its `DescribeAcls` answer comes from the authorizer that decides requests).
#[derive(clap::Args, Clone, Debug)]
#[command(group(
    clap::ArgGroup::new("resource")
        .required(true)
        .args(["topic", "group", "cluster", "transactional_id"])
))]
pub struct AclArgs {
    pub change: AclChange,
    /// For example `User:bridge-limited`.
    #[arg(long)]
    pub principal: String,
    /// A topic name (literal).
    #[arg(long)]
    pub topic: Option<String>,
    /// A consumer group id (literal).
    #[arg(long)]
    pub group: Option<String>,
    /// The cluster (for `IdempotentWrite`).
    #[arg(long)]
    pub cluster: bool,
    /// A transactional id (literal).
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// Repeat for several operations on the same resource.
    #[arg(long = "operation", required = true, ignore_case = true)]
    pub operations: Vec<AclOperation>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclChange {
    Grant,
    Revoke,
}

/// Kafka's ACL operations, spelled as `kafka-acls.sh` takes them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclOperation {
    #[value(name = "Read")]
    Read,
    #[value(name = "Write")]
    Write,
    #[value(name = "Create")]
    Create,
    #[value(name = "Delete")]
    Delete,
    #[value(name = "Alter")]
    Alter,
    #[value(name = "Describe")]
    Describe,
    #[value(name = "DescribeConfigs")]
    DescribeConfigs,
    #[value(name = "AlterConfigs")]
    AlterConfigs,
    #[value(name = "IdempotentWrite")]
    IdempotentWrite,
    #[value(name = "All")]
    All,
}

impl AclOperation {
    /// The name `kafka-acls.sh` takes: the `#[value(name)]` above.
    fn cli_name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// The name in a listed ACL (`operation=IDEMPOTENT_WRITE`).
    fn listed_name(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::Create => "CREATE",
            Self::Delete => "DELETE",
            Self::Alter => "ALTER",
            Self::Describe => "DESCRIBE",
            Self::DescribeConfigs => "DESCRIBE_CONFIGS",
            Self::AlterConfigs => "ALTER_CONFIGS",
            Self::IdempotentWrite => "IDEMPOTENT_WRITE",
            Self::All => "ALL",
        }
    }
}

impl AclArgs {
    /// The resource options for `kafka-acls.sh`.
    fn resource_args(&self) -> Vec<String> {
        if let Some(topic) = &self.topic {
            vec!["--topic".into(), topic.clone()]
        } else if let Some(group) = &self.group {
            vec!["--group".into(), group.clone()]
        } else if let Some(id) = &self.transactional_id {
            vec!["--transactional-id".into(), id.clone()]
        } else {
            vec!["--cluster".into()]
        }
    }

    /// The ACL entry as `kafka-acls.sh --list` prints it.
    fn listed_entry(&self, operation: AclOperation) -> String {
        format!(
            "(principal={}, host=*, operation={}, permissionType=ALLOW)",
            self.principal,
            operation.listed_name()
        )
    }
}

/// Grants or revokes ACLs through Kafka's own `AclCommand` (over the PLAINTEXT
/// listener, whose principal is a super user), then lists the resource's ACLs
/// until the broker shows the change.
pub fn acl(dir: &Path, args: &AclArgs) -> Result<()> {
    let started = Instant::now();
    let state = super::load(dir)?
        .context("the test environment is not up: run `cargo xtask testenv up`")?;
    let kafka = state
        .servers
        .iter()
        .find(|s| s.name == "kafka")
        .context("the test environment has no kafka server")?;
    if !kafka.is_running() {
        bail!("kafka is not running: `cargo xtask testenv start kafka` starts it again");
    }
    let bootstrap = state
        .vars
        .get("KAFKA_BOOTSTRAP")
        .context("KAFKA_BOOTSTRAP missing from the test environment state")?;
    let tools = crate::toolchain::ensure_kafka_tools()?;
    let acl_command = |action: &[&str], with_operations: bool| -> Result<String> {
        let mut cmd = Command::new(&kafka.program);
        cmd.args([
            // A short-lived admin client: start fast, stay small.
            "-Xms32m",
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            "-cp",
        ])
        .arg(format!("{}/*", tools.display()))
        .args(["org.apache.kafka.tools.AclCommand", "--bootstrap-server"])
        .arg(bootstrap)
        .args(action)
        .args(args.resource_args());
        if with_operations {
            cmd.args(["--allow-principal", &args.principal]);
            for op in &args.operations {
                cmd.args(["--operation", &op.cli_name()]);
            }
        }
        let out = cmd.output().context("run Kafka's AclCommand")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kafka-acls {} failed ({}): {}{}",
                action.join(" "),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    };
    match args.change {
        AclChange::Grant => acl_command(&["--add"], true)?,
        AclChange::Revoke => acl_command(&["--remove", "--force"], true)?,
    };
    let changed_at = started.elapsed();
    let want_present = args.change == AclChange::Grant;
    let deadline = Instant::now() + ACL_APPLY_TIMEOUT;
    loop {
        let listed = acl_command(&["--list"], false)?;
        let done = args
            .operations
            .iter()
            .all(|op| listed.contains(&args.listed_entry(*op)) == want_present);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the broker does not show the {:?} of {:?} for {} after {}s; it lists:\n{}",
                args.change,
                args.operations,
                args.principal,
                ACL_APPLY_TIMEOUT.as_secs(),
                listed.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "xtask: {} {:?} on {} for {}: changed in {} ms, shown by the broker after {} ms",
        match args.change {
            AclChange::Grant => "granted",
            AclChange::Revoke => "revoked",
        },
        args.operations,
        args.resource_args().join(" "),
        args.principal,
        changed_at.as_millis(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// A Kafka cluster id: 16 bytes in URL-safe base64, like `kafka-storage random-uuid`.
/// The top bit of the first byte is cleared so the id never starts with `-`
/// (one id in 64 otherwise did, and StorageTool then read it as an option:
/// "argument --cluster-id/-t: expected one argument").
fn kafka_cluster_id(mut bytes: [u8; 16]) -> String {
    use base64::Engine as _;
    bytes[0] &= 0x7f;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::kafka_cluster_id;

    #[test]
    fn a_cluster_id_never_starts_like_an_option() {
        // 0xf8 = 111110.. encodes as `-` in URL-safe base64, 0xfc as `_`.
        for first in [0xf8u8, 0xfb, 0xfc, 0xff, 0x00] {
            let mut bytes = [0xf8u8; 16];
            bytes[0] = first;
            let id = kafka_cluster_id(bytes);
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id}");
        }
        // Without the fix this input would start with `-`.
        use base64::Engine as _;
        assert!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode([0xf8u8; 16])
                .starts_with('-')
        );
    }
}
