//! Apache Kafka, one KRaft node (broker and controller in one process) with
//! PLAINTEXT, SASL_PLAINTEXT (PLAIN and SCRAM-SHA-512) and SASL_SSL (SCRAM-SHA-512) listeners.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

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
    use base64::Engine as _;
    let cluster_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(super::random_bytes());
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
