//! The bridge binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use bridge_runtime::{check, config};
use clap::{Parser, Subcommand};

/// At-least-once MQTT <-> Kafka bridge.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run {
        /// The configuration file.
        #[arg(long, env = bridge_core::rules::CONFIG_ENV)]
        config: PathBuf,
    },
    /// Validate a configuration without connecting; optionally show where a message would go.
    /// Also takes a MqttKafkaBridge manifest, checked with the operator's rules.
    Check {
        /// The configuration file, or a MqttKafkaBridge manifest.
        #[arg(long, env = bridge_core::rules::CONFIG_ENV)]
        config: PathBuf,
        /// An MQTT topic to route.
        #[arg(long)]
        mqtt_topic: Option<String>,
        /// A Kafka topic to route (Kafka→MQTT).
        #[arg(long)]
        kafka_topic: Option<String>,
        /// The Kafka record key, with --kafka-topic.
        #[arg(long)]
        key: Option<String>,
        /// The payload of the sample message.
        #[arg(long, default_value = "")]
        payload: String,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            mqtt_topic,
            kafka_topic,
            key,
            payload,
        } => match manifest(&config) {
            Ok(Some(verdict)) => {
                print!("{verdict}");
                ExitCode::SUCCESS
            }
            Ok(None) => check_file(&config, mqtt_topic, kafka_topic, key, payload),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => bridge_runtime::bridge::main(&config),
    }
}

/// `Some(verdict)` when the file is a MqttKafkaBridge manifest.
fn manifest(path: &std::path::Path) -> Result<Option<String>, bridge_runtime::BridgeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => check::check_manifest(&text),
        // `config::load` reports it.
        Err(_) => Ok(None),
    }
}

fn check_file(
    config: &std::path::Path,
    mqtt_topic: Option<String>,
    kafka_topic: Option<String>,
    key: Option<String>,
    payload: String,
) -> ExitCode {
    match config::load(config) {
        Ok(c) => {
            print!("{}", check::describe_routes(&c));
            if let Some(t) = mqtt_topic {
                print!(
                    "{}",
                    check::describe_mqtt_message(&c, &t, payload.as_bytes())
                );
            }
            if let Some(t) = kafka_topic {
                print!(
                    "{}",
                    check::describe_kafka_record(
                        &c,
                        &t,
                        key.as_deref().map(str::as_bytes),
                        payload.as_bytes()
                    )
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
