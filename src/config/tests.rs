//! Parsing, precedence and validation of the configuration.

use super::*;
use std::collections::BTreeSet;
use std::io::Write;

const EXAMPLE: &str = include_str!("../../tern.example.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("test.toml"))
}

fn parse_error(text: &str) -> String {
    match parse(text) {
        Err(err @ ConfigError::Parse { .. }) => err.to_string(),
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

fn invalid_key(text: &str) -> &'static str {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an Invalid error for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.listeners.tcp.listen, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(c.listeners.enabled().len(), 1);
    assert_eq!(c.listeners.tcp.limits.max_connects_per_sec, 1_000);
    assert_eq!(c.metrics.sys_interval_secs, 10);
    assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
    assert_eq!(c.allow_anonymous, AnonymousPolicy::Loopback);
    assert!(c.allow_anonymous.allows(c.listeners.tcp.listen));
    assert!(!c.allow_anonymous.allows("0.0.0.0:1883".parse().unwrap()));
    assert_eq!(c.im.max_devices_per_user, 8);
    assert_eq!(c.admin.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(c.limits.max_packet_size, 1_048_576);
    assert_eq!(c.limits.max_inflight, 32);
    assert_eq!(c.limits.max_queued_messages, 10_000);
    assert_eq!(c.limits.max_queued_bytes, 67_108_864);
    assert_eq!(c.limits.max_connections, 18_000);
    assert_eq!(c.limits.max_topic_levels, 32);
    assert_eq!(c.limits.max_topic_aliases, 64);
    assert_eq!(c.limits.max_subscriptions_per_session, 1_000);
    assert_eq!(c.limits.connect_timeout_secs, 10);
    assert_eq!(c.limits.max_keepalive_secs, 0);
    assert_eq!(c.limits.max_session_expiry_secs, 604_800);
    assert_eq!(c.limits.max_retained_messages, 1_000_000);
    assert_eq!(c.limits.outbound_channel_capacity, 1_024);
    assert_eq!(c.limits.idle_park_ms, 1_000);
    assert_eq!(c.runtime.worker_threads, 0);
    assert_eq!(c.storage.sync, SyncMode::Always);
    assert_eq!(c.storage.sync_interval_ms, 5);
    assert_eq!(c.storage.writer_queue, 4_096);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    c.validate().unwrap();
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn example_file_parses_to_the_defaults() {
    assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
}

/// deny_unknown_fields catches a key the example has and the code lost; this catches
/// the reverse, a new field the example does not document.
#[test]
fn example_file_lists_every_key() {
    fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let dotted = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{dotted}."), out),
                _ => {
                    out.insert(dotted);
                }
            }
        }
    }
    let mut documented = BTreeSet::new();
    keys(&EXAMPLE.parse().unwrap(), "", &mut documented);
    let mut all = BTreeSet::new();
    keys(
        &toml::Table::try_from(Config::default()).unwrap(),
        "",
        &mut all,
    );
    assert_eq!(documented, all);
}

#[test]
fn partial_file_keeps_other_defaults() {
    let c = parse("[listeners.tcp]\nlisten = \"0.0.0.0:1884\"\n[storage]\nsync = \"batched\"\n")
        .unwrap();
    assert_eq!(c.listeners.tcp.listen, "0.0.0.0:1884".parse().unwrap());
    assert_eq!(c.storage.sync, SyncMode::Batched);
    assert_eq!(c.storage.sync_interval_ms, 5);
    assert_eq!(c.limits, Limits::default());
    let c = parse("[log]\nformat = \"json\"\nlevel = \"tern=debug,warn\"\n").unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "tern=debug,warn");
    assert_eq!(
        parse("storage.sync = \"none\"").unwrap().storage.sync,
        SyncMode::None
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    let msg = parse_error("data_dir = \"x\"\nlisten_port = 1884\n");
    assert!(msg.contains("`listen_port`"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("test.toml"), "{msg}");
    let msg = parse_error("[limit]\nmax_inflight = 5\n");
    assert!(msg.contains("`limit`"), "{msg}");
}

#[test]
fn unknown_nested_key_is_named_with_its_table() {
    let msg = parse_error("[limits]\nmax_pakcet_size = 1\n");
    assert!(msg.contains("`limits.max_pakcet_size`"), "{msg}");
    assert!(msg.contains("line 2, column 1"), "{msg}");
    let msg = parse_error("log.colour = true\n");
    assert!(msg.contains("`log.colour`"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let msg = parse_error("[listeners.tcp]\nlisten = 5\n");
    assert!(msg.contains("`listeners.tcp.listen`"), "{msg}");
    let msg = parse_error("[storage]\nsync = \"sometimes\"\n");
    assert!(msg.contains("`storage.sync`"), "{msg}");
    assert!(msg.contains("sometimes"), "{msg}");
    let msg = parse_error("[limits]\nmax_inflight = 70000\n");
    assert!(msg.contains("`limits.max_inflight`"), "{msg}");
    let msg = parse_error("listeners.ws.listen = \"localhost\"\n");
    assert!(msg.contains("`listeners.ws.listen`"), "{msg}");
    let msg = parse_error("limits = 3\n");
    assert!(msg.contains("`limits`"), "{msg}");
}

#[test]
fn syntax_error_gives_the_position() {
    let msg = parse_error("data_dir = \n");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn out_of_range_values_are_invalid_with_their_key() {
    assert_eq!(
        invalid_key("[limits]\nmax_inflight = 0"),
        "limits.max_inflight"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_packet_size = 10"),
        "limits.max_packet_size"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_packet_size = 268_435_461"),
        "limits.max_packet_size"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_queued_messages = 0"),
        "limits.max_queued_messages"
    );
    assert_eq!(
        invalid_key("[limits]\nmax_queued_bytes = 1000"),
        "limits.max_queued_bytes"
    );
    assert_eq!(
        invalid_key("[limits]\nconnect_timeout_secs = 0"),
        "limits.connect_timeout_secs"
    );
    assert_eq!(
        invalid_key("[limits]\noutbound_channel_capacity = 0"),
        "limits.outbound_channel_capacity"
    );
    assert_eq!(
        invalid_key("[limits]\nidle_park_ms = 3_600_001"),
        "limits.idle_park_ms"
    );
    assert_eq!(
        invalid_key("[runtime]\nworker_threads = 1_025"),
        "runtime.worker_threads"
    );
    let one = parse("[runtime]\nworker_threads = 1").expect("valid");
    assert_eq!(one.runtime.worker_threads, 1);
    assert_eq!(
        invalid_key("[storage]\nsync_interval_ms = 0"),
        "storage.sync_interval_ms"
    );
    assert_eq!(
        invalid_key("[storage]\nsync_interval_ms = 10_001"),
        "storage.sync_interval_ms"
    );
    assert_eq!(
        invalid_key("[storage]\nwriter_queue = 0"),
        "storage.writer_queue"
    );
    assert_eq!(invalid_key("data_dir = \"\""), "data_dir");
    let err = parse("[limits]\nmax_inflight = 0").unwrap_err().to_string();
    assert!(err.contains("`limits.max_inflight`"), "{err}");
}

#[test]
fn edges_of_ranges_are_accepted() {
    parse("[limits]\nmax_packet_size = 64\nmax_inflight = 1\nmax_queued_bytes = 64").unwrap();
    parse("[limits]\nmax_packet_size = 268_435_460\nmax_queued_bytes = 268_435_460").unwrap();
    // Beyond what a session counts (u32): accepted, and acting as u32::MAX.
    parse("[limits]\nmax_queued_bytes = 4_294_967_296\nmax_queued_messages = 5_000_000_000")
        .unwrap();
    parse("[storage]\nsync_interval_ms = 10_000").unwrap();
    parse("[limits]\nmax_topic_aliases = 0\nmax_retained_messages = 0").unwrap();
}

#[test]
fn log_level_is_checked() {
    assert_eq!(invalid_key("[log]\nlevel = \"\""), "log.level");
    assert_eq!(invalid_key("[log]\nlevel = \"debg\""), "log.level");
    assert_eq!(invalid_key("[log]\nlevel = \"tern=loud\""), "log.level");
    for ok in [
        "warn",
        "tern=debug,warn",
        "tern::router=trace",
        "off",
        "DEBUG",
    ] {
        parse(&format!("[log]\nlevel = {ok:?}")).unwrap();
    }
}

#[test]
fn missing_file_is_a_read_error_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    match Config::load(&path) {
        Err(ConfigError::Read { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("absent.toml"), "{err}");
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn load_reads_the_file() {
    let file = config_file("allow_anonymous = false\n");
    assert_eq!(
        Config::load(file.path()).unwrap().allow_anonymous,
        AnonymousPolicy::Never
    );
}

#[test]
fn allow_anonymous_takes_a_flag_or_loopback() {
    assert_eq!(
        parse("allow_anonymous = true").unwrap().allow_anonymous,
        AnonymousPolicy::Always
    );
    assert_eq!(
        parse("allow_anonymous = \"loopback\"")
            .unwrap()
            .allow_anonymous,
        AnonymousPolicy::Loopback
    );
    let err = parse_error("allow_anonymous = \"sometimes\"");
    assert!(
        err.contains("allow_anonymous") && err.contains("loopback"),
        "{err}"
    );
    assert_eq!(invalid_key("[im]\noperators = [\"a/b\"]"), "im.operators");
    assert_eq!(
        invalid_key("[im]\nsync_max_messages = 0"),
        "im.sync_max_messages"
    );
}

#[test]
fn no_overrides_and_no_file_are_the_defaults() {
    assert_eq!(
        Config::with_overrides(&Overrides::default()).unwrap(),
        Config::default()
    );
}

#[test]
fn command_line_beats_the_file() {
    let file = config_file(
        "data_dir = \"/from/file\"\n[listeners.tcp]\nlisten = \"0.0.0.0:1884\"\n\
         [log]\nlevel = \"debug\"\n[limits]\nmax_inflight = 7\n",
    );
    let args = Overrides {
        config_file: Some(file.path().to_path_buf()),
        listen: Some("127.0.0.1:2883".parse().unwrap()),
        data_dir: Some(PathBuf::from("/from/cli")),
        log_level: Some("warn".to_string()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
    };
    let c = Config::with_overrides(&args).unwrap();
    assert_eq!(c.listeners.tcp.listen, "127.0.0.1:2883".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/from/cli"));
    assert_eq!(c.log.level, "warn");
    assert_eq!(c.admin.listen, "127.0.0.1:0".parse().unwrap());
    // Keys without a flag still come from the file.
    assert_eq!(c.limits.max_inflight, 7);

    // Without flags, the file wins over the defaults.
    let args = Overrides {
        config_file: Some(file.path().to_path_buf()),
        ..Overrides::default()
    };
    let c = Config::with_overrides(&args).unwrap();
    assert_eq!(c.listeners.tcp.listen, "0.0.0.0:1884".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    assert_eq!(c.log.level, "debug");
}

#[test]
fn command_line_values_are_validated_and_can_fix_the_file() {
    let args = Overrides {
        log_level: Some("lod".to_string()),
        ..Overrides::default()
    };
    match Config::with_overrides(&args) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "log.level"),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
    // Validation runs after the overrides: a bad file value the flag replaces is fine.
    let file = config_file("[log]\nlevel = \"lod\"\n");
    let args = Overrides {
        config_file: Some(file.path().to_path_buf()),
        log_level: Some("info".to_string()),
        ..Overrides::default()
    };
    assert_eq!(Config::with_overrides(&args).unwrap().log.level, "info");
}

#[test]
fn listeners_are_checked() {
    assert_eq!(
        invalid_key("[listeners.tls]\nenabled = true\nkey_file = \"k.pem\""),
        "listeners.tls.cert_file"
    );
    assert_eq!(
        invalid_key("[listeners.wss]\nenabled = true\ncert_file = \"c.pem\""),
        "listeners.wss.key_file"
    );
    assert_eq!(
        invalid_key("[listeners.ws]\npath = \"mqtt\""),
        "listeners.ws.path"
    );
    assert_eq!(invalid_key("[listeners.tcp]\nenabled = false"), "listeners");
    assert_eq!(
        invalid_key("[listeners.ws]\nenabled = true\nlisten = \"127.0.0.1:1883\""),
        "listeners"
    );
    let c = parse(
        "[listeners.ws]\nenabled = true\npath = \"/chat\"\n\
         [listeners.ws.limits]\nmax_connections_per_ip = 4\n",
    )
    .unwrap();
    let specs = c.listeners.enabled();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1].kind, ListenerKind::Ws);
    assert_eq!(specs[1].ws_path.as_deref(), Some("/chat"));
    assert_eq!(specs[1].limits.max_connections_per_ip, 4);
    let msg = parse_error("[listeners.tcp]\npath = \"/mqtt\"\n");
    assert!(msg.contains("`listeners.tcp.path`"), "{msg}");
}

#[test]
fn from_args_reports_a_missing_file() {
    let args = Overrides {
        config_file: Some(PathBuf::from("/nonexistent/tern.toml")),
        ..Overrides::default()
    };
    match Config::with_overrides(&args) {
        Err(ConfigError::Read { path, .. }) => {
            assert_eq!(path, PathBuf::from("/nonexistent/tern.toml"))
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn cluster_is_off_by_default_and_a_nats_node_needs_a_name_and_servers() {
    let c = Config::default();
    assert!(!c.cluster.enabled());
    let node = parse("[cluster]\nengine = \"nats\"\nnode_id = \"eu-1\"\nnats_urls = [\"nats://10.0.0.1:4222\", \"10.0.0.2\"]\n")
        .expect("a valid node");
    assert!(node.cluster.enabled());
    assert_eq!(node.cluster.replicas, 3);
    assert_eq!(
        invalid_key("[cluster]\nengine = \"nats\"\n"),
        "cluster.node_id"
    );
    assert_eq!(
        invalid_key("[cluster]\nengine = \"nats\"\nnode_id = \"a.b\"\n"),
        "cluster.node_id"
    );
    assert_eq!(
        invalid_key("[cluster]\nengine = \"nats\"\nnode_id = \"a\"\nnats_urls = []\n"),
        "cluster.nats_urls"
    );
    assert_eq!(
        invalid_key(
            "[cluster]\nengine = \"nats\"\nnode_id = \"a\"\nnats_urls = [\"nats://[::1\"]\n"
        ),
        "cluster.nats_urls"
    );
    assert_eq!(invalid_key("[cluster]\nreplicas = 0\n"), "cluster.replicas");
    assert_eq!(invalid_key("[cluster]\nshards = 2000\n"), "cluster.shards");
    assert_eq!(
        invalid_key("[cluster]\ninbox_trim_secs = 0\n"),
        "cluster.inbox_trim_secs"
    );
    assert_eq!(
        invalid_key("[cluster]\ntoken = \"t\"\nuser = \"u\"\n"),
        "cluster.credentials_file"
    );
    assert!(parse_error("[cluster]\nengine = \"raft\"\n").contains("engine"));
    assert_eq!(node.cluster.node_ttl_ms, 10_000);
    assert_eq!(
        invalid_key("[cluster]\nnode_ttl_ms = 500\n"),
        "cluster.node_ttl_ms"
    );
}
