//! `apiary`: the node daemon and the command line.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use arrow::array::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};

use apiary::config::{Config, LogFormat};
use apiary::error::{Error, Result};
use apiary::frames::{Column, FrameDef, WriteMode};
use apiary::input::{self, InputFormat};
use apiary::names::FrameRef;
use apiary::node::{Node, Services};
use apiary::remote::{Remote, Scope};
use apiary::sql::{QueryResult, Session};
use apiary::{Apiary, output, telemetry};

mod allocator;
mod local;

use local::LocalCmd;

#[derive(Parser)]
#[command(
    name = "apiary",
    version,
    about = "Apiary: a lakehouse for small computers"
)]
struct Cli {
    /// Meadow (storage) URI: a directory, file:///dir, s3://bucket/prefix or memory://
    /// [env: APIARY_STORAGE]
    #[arg(long, global = true)]
    storage: Option<String>,
    /// Config file [env: APIARY_CONFIG; default /etc/apiary/apiary.toml when present]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Node state directory (node id, scratch, default local meadow) [env: APIARY_STATE_DIR]
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// This node's id in the swarm (default: made once and kept in the state dir)
    /// [env: APIARY_NODE_ID]
    #[arg(long, global = true)]
    node_id: Option<String>,
    /// Log format [env: APIARY_LOG_FORMAT]
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or apiary=debug [env: APIARY_LOG]
    #[arg(long, global = true)]
    log: Option<String>,
    /// Talk to a running node's HTTP API instead (sql, shell, udf, status, swarm, colony,
    /// bees), e.g. http://pi.local:8080
    #[arg(long, global = true, env = "APIARY_REMOTE")]
    remote: Option<String>,
    /// The remote node's API token
    #[arg(long, global = true, env = "APIARY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node until SIGINT or SIGTERM
    Node,
    /// Run SQL (several ;-separated statements run in order; USE carries over)
    Sql {
        query: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print the plan instead of running it: which node would scan which cells
        #[arg(long)]
        explain_swarm: bool,
    },
    /// Interactive SQL shell (\q to quit)
    Shell,
    /// Hives (databases)
    #[command(subcommand, alias = "database")]
    Hive(HiveCmd),
    /// Boxes (schemas)
    #[command(subcommand, name = "box", alias = "schema")]
    Box_(BoxCmd),
    /// Frames (tables)
    #[command(subcommand, alias = "table")]
    Frame(FrameCmd),
    /// Write a CSV (with header), JSON lines or Parquet file (or - for stdin) into a frame
    Write {
        /// hive.box.frame
        frame: String,
        file: String,
        /// Input format (default: from the file name, or sniffed for stdin)
        #[arg(long, value_enum)]
        format: Option<InputFormat>,
    },
    /// SQL functions compiled to WebAssembly components (shared by every node of the meadow)
    #[command(subcommand, alias = "function")]
    Udf(UdfCmd),
    /// Node status
    Status,
    /// The bees: state, task and memory of each
    Bees,
    /// The colony model: temperature, regulation band, retried and abandoned tasks
    Colony,
    /// The nodes of the swarm: state, bees, temperature
    Swarm,
    /// MQTT ingestion of the node running with this state dir
    #[command(subcommand)]
    Ingest(IngestCmd),
    #[command(flatten)]
    Local(LocalCmd),
}

#[derive(Subcommand)]
enum IngestCmd {
    /// Rates, write-ahead log depth, last commit, rejects
    Status,
}

#[derive(Subcommand)]
enum UdfCmd {
    /// Upload a component (cargo build --target wasm32-wasip2 --release) as function NAME
    Add {
        name: String,
        file: String,
        /// Replace a function of that name that has another component
        #[arg(long)]
        replace: bool,
    },
    /// Name, signature and hash of every function
    List,
    /// Remove a function
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Subcommand)]
enum HiveCmd {
    Create { name: String },
    List,
}

#[derive(Subcommand)]
enum BoxCmd {
    /// Create hive.box
    Create { name: String },
    /// List the boxes of a hive
    List { hive: String },
}

#[derive(Subcommand)]
enum FrameCmd {
    /// Create hive.box.frame
    Create {
        name: String,
        /// Columns as name:type,... e.g. 'id:int64,temp:float64,ts:timestamp'
        #[arg(long)]
        schema: String,
        /// Partition columns, comma-separated
        #[arg(long)]
        partition_by: Option<String>,
    },
    /// List the frames of hive.box
    List { hive_box: String },
    /// Columns and figures of hive.box.frame
    Describe { name: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
    Arrow,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    telemetry::init(config.log.format, &config.log.level);
    apiary::bees::return_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&Error::internal(format!("cannot start the runtime: {e}"))),
    };
    let work = async {
        match &cli.remote {
            // The config file is this machine's, remote or not.
            Some(url) if !matches!(cli.command, Command::Local(_)) => {
                run_remote(cli.command, url, cli.token.as_deref(), &config).await
            }
            _ => run(cli.command, config, cli.config).await,
        }
    };
    let done = runtime.block_on(work);
    // Work cut short by the shutdown deadline may leave blocking I/O behind: do not wait on it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    let msg = e.to_string().replace('\n', " ");
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(s) = &cli.storage {
        config.meadow.uri = Some(s.clone());
    }
    if let Some(d) = &cli.state_dir {
        config.node.state_dir = d.clone();
    }
    if let Some(id) = &cli.node_id {
        config.node.node_id = Some(id.clone());
    }
    if let Some(f) = cli.log_format {
        config.log.format = f;
    }
    if let Some(l) = &cli.log {
        config.log.level = l.clone();
    }
    Ok(config)
}

async fn run(command: Command, config: Config, config_path: Option<PathBuf>) -> Result<()> {
    if let Command::Ingest(IngestCmd::Status) = command {
        // Read what the running node wrote; this process does not open the meadow.
        return print_json(&apiary::ingest::read_status(&config.node.state_dir)?);
    }
    if let Command::Local(cmd) = command {
        return local::run(cmd, config, config_path).await;
    }
    let apiary = Apiary::open(config).await?;
    let registry = apiary.frames().registry();
    match command {
        Command::Node => run_node(apiary).await,
        Command::Sql {
            query,
            format,
            explain_swarm,
        } => {
            let mut session = apiary.session();
            let query = explain(&query, explain_swarm);
            for result in session.run_script(&query).await? {
                print_result(&result, format)?;
            }
            Ok(())
        }
        Command::Shell => {
            let history = apiary.config().node.state_dir.join("shell_history");
            shell(Target::Local(Box::new(apiary.session())), &history).await
        }
        Command::Hive(HiveCmd::Create { name }) => registry.create_hive(&name).await.map(|_| ()),
        Command::Hive(HiveCmd::List) => print_lines(registry.list_hives().await?),
        Command::Box_(BoxCmd::Create { name }) => {
            let [h, b] = split_name::<2>(&name, "hive.box")?;
            registry.create_box(&h, &b).await.map(|_| ())
        }
        Command::Box_(BoxCmd::List { hive }) => print_lines(registry.list_boxes(&hive).await?),
        Command::Frame(FrameCmd::Create {
            name,
            schema,
            partition_by,
        }) => {
            let frame: FrameRef = name.parse()?;
            let columns = parse_schema_arg(&schema)?;
            let partition_by = partition_by
                .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default();
            let def = FrameDef::new(&frame, columns, partition_by)?;
            apiary.frames().create_frame(&def).await.map(|_| ())
        }
        Command::Frame(FrameCmd::List { hive_box }) => {
            let [h, b] = split_name::<2>(&hive_box, "hive.box")?;
            print_lines(registry.list_frames(&h, &b).await?)
        }
        Command::Frame(FrameCmd::Describe { name }) => {
            let result = apiary
                .session()
                .run(&format!("DESCRIBE {}", quote_name(&name)?))
                .await?;
            print_result(&result, Format::Table)
        }
        Command::Write {
            frame,
            file,
            format,
        } => write_file(&apiary, &frame, &file, format).await,
        Command::Udf(UdfCmd::Add {
            name,
            file,
            replace,
        }) => {
            let m = apiary
                .udfs()
                .add(&name, read_file(&file)?.into(), replace)
                .await?;
            println!(
                "{}({}) -> {}  sha256 {}",
                m.name,
                m.args.join(", "),
                m.returns,
                m.sha256
            );
            Ok(())
        }
        Command::Udf(UdfCmd::List) => print_json(&apiary.udfs().list().await?),
        Command::Udf(UdfCmd::Rm { name }) => apiary.udfs().remove(&name).await,
        Command::Status => print_json(&apiary.status()),
        Command::Bees => print_json(&apiary.bee_status()),
        Command::Colony => print_json(&apiary.colony_status()),
        Command::Swarm => print_json(&apiary.swarm_status().await?),
        Command::Ingest(IngestCmd::Status) | Command::Local(_) => {
            unreachable!("handled before opening the meadow")
        }
    }
}

/// The commands that work against a node's HTTP API.
async fn run_remote(
    command: Command,
    url: &str,
    token: Option<&str>,
    config: &Config,
) -> Result<()> {
    let remote = Remote::new(url, token)?;
    match command {
        Command::Sql {
            query,
            format,
            explain_swarm,
        } => {
            let mut target = Target::Remote(remote, Scope::default());
            for result in target.run_script(&explain(&query, explain_swarm)).await? {
                print_result(&result, format)?;
            }
            Ok(())
        }
        Command::Shell => {
            let history = config.node.state_dir.join("shell_history");
            shell(Target::Remote(remote, Scope::default()), &history).await
        }
        Command::Udf(UdfCmd::Add {
            name,
            file,
            replace,
        }) => print_json(&remote.udf_add(&name, read_file(&file)?, replace).await?),
        Command::Udf(UdfCmd::List) => print_json(&remote.get_json("/v1/udfs").await?),
        Command::Udf(UdfCmd::Rm { name }) => remote.udf_remove(&name).await,
        Command::Status => print_json(&remote.get_json("/v1/status").await?),
        Command::Swarm => print_json(&remote.get_json("/v1/swarm").await?),
        Command::Colony => print_json(&remote.get_json("/v1/colony").await?),
        Command::Bees => print_json(&remote.get_json("/v1/bees").await?),
        Command::Ingest(IngestCmd::Status) => print_json(&remote.get_json("/v1/ingest").await?),
        _ => Err(Error::invalid(
            "this command works on a meadow, not over --remote: use SQL (e.g. CREATE TABLE, \
             INSERT) through `apiary --remote ... sql`",
        )),
    }
}

/// Where SQL runs: a session on this process's meadow, or a remote node.
enum Target {
    Local(Box<Session>),
    Remote(Remote, Scope),
}

impl Target {
    async fn run_script(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        match self {
            Target::Local(session) => session.run_script(sql).await,
            Target::Remote(remote, scope) => {
                // Checked here whole, then sent one by one (the scope travels in headers).
                let statements = apiary::sql::statement::parse_script(sql)?;
                if statements.is_empty() {
                    return Err(Error::invalid("no SQL statement given"));
                }
                let mut results = Vec::with_capacity(statements.len());
                for s in statements {
                    results.push(remote.sql(&s.to_string(), scope).await?);
                }
                Ok(results)
            }
        }
    }

    fn scope(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Target::Local(s) => (s.hive(), s.box_name()),
            Target::Remote(_, scope) => (scope.hive.as_deref(), scope.box_name.as_deref()),
        }
    }
}

async fn run_node(apiary: Apiary) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal that comes as soon as "ready" is logged (or while starting)
    // must stop the node cleanly, not kill it.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let services = Services::node(apiary.config());
    let node = Node::start(apiary, services).await?;
    let status = node.apiary().status();
    tracing::info!(
        name = %status.name,
        node_id = %status.node_id,
        storage = %status.storage_uri,
        bees = status.bees,
        memory_per_bee_mb = status.memory_per_bee_mb,
        http = %node.http_url().unwrap_or_else(|| "off".into()),
        "apiary node ready"
    );
    apiary::service::ready(&format!("serving; node {}", status.node_id));
    let config = node.apiary().config();
    if config.update.channel.is_some()
        && let Err(e) = apiary::release::follow::ready(&config.node.state_dir)
    {
        tracing::warn!(error = %e, "cannot tell the update helper this version is ready");
    }
    let watchdog = apiary::service::watchdog();
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
    apiary::service::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// `--explain-swarm`: the query's plan as the swarm would run it (`EXPLAIN` shows it).
fn explain(query: &str, explain_swarm: bool) -> String {
    if explain_swarm {
        format!("EXPLAIN {}", query.trim().trim_end_matches(';'))
    } else {
        query.to_string()
    }
}

fn split_name<const N: usize>(name: &str, shape: &str) -> Result<[String; N]> {
    let parts: Vec<String> = name.split('.').map(str::to_string).collect();
    parts
        .try_into()
        .map_err(|_| Error::invalid(format!("bad name {name:?}: expected {shape}")))
}

/// `a.b.c` → `"a"."b"."c"` so names keep their case in generated SQL.
fn quote_name(name: &str) -> Result<String> {
    let frame: FrameRef = name.parse()?;
    Ok(frame.parts().map(|p| format!("\"{p}\"")).join("."))
}

fn parse_schema_arg(schema: &str) -> Result<Vec<Column>> {
    schema
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (name, ty) = item.split_once(':').ok_or_else(|| {
                Error::invalid(format!("bad column {item:?} in --schema: write name:type"))
            })?;
            Column::new(name.trim(), ty.trim())
        })
        .collect()
}

async fn write_file(
    apiary: &Apiary,
    frame: &str,
    file: &str,
    format: Option<InputFormat>,
) -> Result<()> {
    let name: FrameRef = frame.parse()?;
    let schema = apiary::frames::arrow_schema(&apiary.frames().registry().frame(&name).await?)?;
    let (reader, format): (Box<dyn Read + Send>, InputFormat) = if file == "-" {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data)?;
        let format = format.unwrap_or_else(|| InputFormat::sniff(&data));
        (Box::new(std::io::Cursor::new(data)), format)
    } else {
        let handle = std::fs::File::open(file)
            .map_err(|e| Error::invalid(format!("cannot open {file}: {e}")))?;
        let format = format
            .or_else(|| InputFormat::from_path(file))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "cannot tell the format of {file}: pass --format csv|jsonl|parquet"
                ))
            })?;
        let size = handle.metadata()?.len();
        let reader: Box<dyn Read + Send> = if std::io::stderr().is_terminal() && size > 16 << 20 {
            let bar = indicatif::ProgressBar::new(size).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta}")
                    .expect("static template"),
            );
            Box::new(bar.wrap_read(handle))
        } else {
            Box::new(handle)
        };
        (reader, format)
    };
    let batches = tokio::task::spawn_blocking(move || input::read_batches(reader, format, schema))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| e.context(format!("reading {file}")))?;
    let report = apiary.write(&name, batches, WriteMode::Append).await?;
    eprintln!(
        "wrote {} rows in {} cells ({} bytes) to {frame}, version {}",
        report.rows_written, report.cells_written, report.bytes_written, report.version
    );
    Ok(())
}

fn read_file(file: &str) -> Result<Vec<u8>> {
    std::fs::read(file).map_err(|e| Error::invalid(format!("cannot read {file}: {e}")))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(Error::from)?
    );
    Ok(())
}

fn print_lines(lines: Vec<String>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

fn print_result(result: &QueryResult, format: Format) -> Result<()> {
    if result.schema.fields().is_empty() {
        return Ok(()); // a statement with no result set (DDL, USE)
    }
    let mut out = std::io::stdout().lock();
    let empty;
    let batches: &[RecordBatch] = if result.batches.is_empty() {
        empty = [RecordBatch::new_empty(result.schema.clone())];
        &empty
    } else {
        &result.batches
    };
    let format = match format {
        Format::Table => {
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
            return Ok(());
        }
        Format::Csv => output::Format::Csv,
        Format::Json => output::Format::Json,
        Format::Arrow => output::Format::Arrow,
    };
    out.write_all(&output::encode(format, &result.schema, batches)?)?;
    Ok(())
}

async fn shell(mut target: Target, history: &std::path::Path) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Error::internal(format!("cannot start the shell: {e}")))?;
    let _ = editor.load_history(history);
    let mut pending = String::new();
    loop {
        let scope = match target.scope() {
            (Some(h), Some(b)) => format!("{h}.{b}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        };
        let prompt = if pending.is_empty() {
            format!("apiary:{scope}> ")
        } else {
            "    ...> ".into()
        };
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(_) => break, // EOF
        };
        let trimmed = line.trim();
        if pending.is_empty()
            && (trimmed == "\\q"
                || trimmed.eq_ignore_ascii_case("quit")
                || trimmed.eq_ignore_ascii_case("exit"))
        {
            break;
        }
        if trimmed.is_empty() && pending.is_empty() {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let _ = editor.add_history_entry(pending.trim());
        match target.run_script(&pending).await {
            Ok(results) => {
                for r in results {
                    print_result(&r, Format::Table)?;
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
        pending.clear();
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(history);
    Ok(())
}
