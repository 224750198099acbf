//! The commands that act on this machine's files and on the meadow itself, never through
//! `--remote`: the config file, the MQTT listener's credentials, signed releases and their
//! installation.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use apiary::config::Config;
use apiary::error::{Error, Result};
use apiary::meadow::Meadow;

#[derive(Subcommand)]
pub enum LocalCmd {
    /// The config file (--config, APIARY_CONFIG or /etc/apiary/apiary.toml)
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Credentials of the embedded MQTT listener
    #[command(subcommand)]
    Mqtt(MqttCmd),
    /// Signed releases of the node in the meadow, for nodes that follow a channel ([update])
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Installing a release a node asked for (the package's update helper runs this as root)
    #[command(subcommand)]
    Update(UpdateCmd),
}

#[derive(Subcommand)]
pub enum MqttCmd {
    /// Hash a password (the first line on standard input) for an [[mqtt.users]] entry and
    /// print the entry
    Passwd { name: String },
    /// Print the device credential (user and password) and, with mqtt.tls_listen, the TLS
    /// certificate's SHA-256 fingerprint; both are made in the state dir if missing
    Credentials,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check it (with the APIARY_* environment): exit 0 and say which file, or say what is wrong
    Check,
    /// Print the value at a dotted key as written in the file (a string as is, an array a
    /// line an item; nothing when unset), e.g. device.wifi.ssid
    Get { key: String },
}

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Make an ed25519 signing key in FILE (kept off the nodes and out of the meadow) and print
    /// the public key for update.trusted_keys
    Keygen { file: PathBuf },
    /// Sign a package of the node (packaging/deb/build.sh) and make it the channel's release
    /// for its architecture
    Publish {
        deb: PathBuf,
        /// The signing key from `apiary release keygen`
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "stable")]
        channel: String,
    },
}

#[derive(Subcommand)]
pub enum UpdateCmd {
    /// Install the release this machine's node asked for, or finish one under way: wait for
    /// the new version to be ready, else go back to the previous one
    Apply,
}

pub async fn run(cmd: LocalCmd, config: Config, config_path: Option<PathBuf>) -> Result<()> {
    match cmd {
        LocalCmd::Mqtt(MqttCmd::Passwd { name }) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(Error::invalid(
                    "no password: write it as the first line on standard input",
                ));
            }
            let hash = apiary::ingest::hash_password(password)?;
            println!(
                "[[mqtt.users]]\nname = {name:?}\npassword_hash = {hash:?}\npublish = [\"#\"]"
            );
            Ok(())
        }
        LocalCmd::Mqtt(MqttCmd::Credentials) => {
            let c = apiary::ingest::device_credentials(&config)?;
            println!("user = {:?}\npassword = {:?}", c.user, c.password);
            if let Some(fp) = c.tls_sha256 {
                println!("mqtts_sha256 = {fp:?}");
            }
            Ok(())
        }
        // `main` has loaded and checked the config already.
        LocalCmd::Config(cmd) => {
            let file = Config::file(config_path.as_deref());
            match cmd {
                ConfigCmd::Check => match file {
                    Some(f) => println!("{}: ok", f.display()),
                    None => println!("no config file: defaults (and APIARY_* variables) ok"),
                },
                ConfigCmd::Get { key } => {
                    if let Some(v) = file
                        .map(|f| Config::lookup_file(&f, &key))
                        .transpose()?
                        .flatten()
                    {
                        println!("{v}");
                    }
                }
            }
            Ok(())
        }
        LocalCmd::Release(ReleaseCmd::Keygen { file }) => {
            let public = apiary::release::keygen(&file)?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# signing key: {} (keep it safe, off the nodes)",
                file.display()
            )?;
            writeln!(
                out,
                "[update]\nchannel = \"stable\"\ntrusted_keys = [\"{public}\"]"
            )?;
            Ok(())
        }
        LocalCmd::Release(ReleaseCmd::Publish { deb, key, channel }) => {
            let meadow = Meadow::open(&config.meadow_uri(), &config.meadow.options).await?;
            let r = apiary::release::publish(&meadow, &deb, &key, &channel).await?;
            println!(
                "published apiary {} for {} on channel {channel} (sha256 {})",
                r.version, r.architecture, r.sha256
            );
            Ok(())
        }
        LocalCmd::Update(UpdateCmd::Apply) => {
            tokio::task::spawn_blocking(move || apiary::release::install::apply(&config))
                .await
                .map_err(|e| Error::internal(e.to_string()))?
        }
    }
}
