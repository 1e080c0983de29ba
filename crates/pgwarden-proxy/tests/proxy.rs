//! `pgwarden proxy` end to end: a real broker, a real PostgreSQL (scram-sha-256, an ordinary
//! CREATEROLE administrator), service-account tokens from the test issuer, and real clients
//! (tokio-postgres, psql, psycopg) through the proxy in both pooling modes.

use pgwarden_proxy::{ProxyConfig, Running};
use pgwarden_testkit::broker::TestBroker;
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

const AUD: &str = "pgwarden";

/// Readonly leases of 1 h, `short` ones of 3 s renewable to 6 s (replaced about every 5 s,
/// 0.7 s before the old one ends), and `rotating` ones of 9 s renewable to 18 s (replaced
/// about every 16 s, 2 s before the old one ends: room for a loaded machine).
const ROLES: &str =
    "      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }
      short: { db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 6s }
      rotating: { db_name: appdb, preset: readonly, default_ttl: 9s, max_ttl: 18s }
      mine: { db_name: appdb, identity_role: true }
      writer: { db_name: appdb, preset: user, default_ttl: 1h, max_ttl: 24h }";

const POLICY: &str = r#"
grants:
  - subjects: ["system:serviceaccount:team-a:*"]
    roles: ["database/appdb-readonly", "database/short", "database/rotating", "database/mine", "database/writer"]
  - subjects: ["group:dba"]
    roles: ["database/appdb-readonly"]
"#;

/// A broker with Kubernetes logins for namespaces team-a and team-b and OIDC logins for
/// people, and a proxy before it.
struct World {
    cluster: PgCluster,
    issuer: TestIssuer,
    broker: TestBroker,
    proxy: Option<Running>,
    socket_dir: tempfile::TempDir,
    _policy_dir: tempfile::TempDir,
}

async fn world(mode: &str, extra: &str) -> World {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let url = cluster.templated_url("appdb");
    world_with(cluster, &url, mode, extra, "").await
}

/// [`world`] with the broker's connection at `url` (several hosts, say), and `broker_extra`
/// YAML in the broker's configuration.
async fn world_with(
    cluster: PgCluster,
    url: &str,
    mode: &str,
    extra: &str,
    broker_extra: &str,
) -> World {
    let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let auth = format!(
        r#"
policy_file: "{policy}"
auth:
  kubernetes:
    type: kubernetes
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [{AUD}]
    roles:
      team-a: {{ bound_service_account_names: ["*"], bound_service_account_namespaces: [team-a] }}
      team-b: {{ bound_service_account_names: ["*"], bound_service_account_namespaces: [team-b] }}
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [{AUD}]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
{broker_extra}
"#,
        policy = policy.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    );
    let mut broker = TestBroker::at_url(url, ROLES, &auth);
    broker.boot().await;
    let socket_dir = tempfile::tempdir().unwrap();
    let mut world = World {
        cluster,
        issuer,
        broker,
        proxy: None,
        socket_dir,
        _policy_dir: policy_dir,
    };
    world.proxy = Some(world.start_proxy(mode, extra).await);
    world
}

impl World {
    /// A proxy in pool mode `mode` with `extra` YAML, before this world's broker.
    async fn start_proxy(&self, mode: &str, extra: &str) -> Running {
        let config = ProxyConfig::parse(&format!(
            r#"
address: "{base}"
listen: 127.0.0.1:0
unix_socket_dir: "{dir}"
metrics_listen: 127.0.0.1:0
pool_mode: {mode}
pool_size: 3
client_login_timeout: 2s
query_wait_timeout: 5s
drain_timeout: 5s
auth:
  identity:
    logins: [{{mount: kubernetes, role: team-a}}, {{mount: kubernetes, role: team-b}}, {{mount: jwt, role: people}}]
{extra}
"#,
            base = self.broker.base,
            dir = self.socket_dir.path().display(),
        ))
        .unwrap();
        pgwarden_proxy::start(config).await.unwrap()
    }

    fn port(&self) -> u16 {
        self.proxy.as_ref().unwrap().addr.unwrap().port()
    }

    fn token(&self, namespace: &str) -> String {
        self.issuer
            .service_account_token(TestKey::Rsa1, AUD, namespace, "app")
    }

    fn config(&self, role: &str, password: &str) -> tokio_postgres::Config {
        pg_config(self.port(), role, Some(password))
    }

    async fn connect(
        &self,
        role: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config(role, password).connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn metrics(&self) -> String {
        get(self.proxy.as_ref().unwrap().metrics_addr, "/metrics").await
    }
}

/// A plain HTTP/1.0 GET, enough for the proxy's own endpoints.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// A client of `proxy` as `role`.
async fn connect_to(proxy: &Running, role: &str, password: &str) -> tokio_postgres::Client {
    let config = pg_config(proxy.addr.unwrap().port(), role, Some(password));
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Sends `bytes` to the proxy's port and reads what it answers until it closes.
fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// SSL's magic request code, as a startup-phase packet.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A startup packet (protocol 3.0) for `user` on database appdb.
fn startup_packet(user: &str) -> Vec<u8> {
    let body = format!("\0\x03\0\0user\0{user}\0database\0appdb\0\0");
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body.as_bytes());
    packet
}

/// Sends an `SSLRequest` to the proxy's port, reads its one-byte answer, then sends `next`
/// and reads what comes until it closes: the answer and the rest.
async fn after_ssl_request(port: u16, next: Vec<u8>) -> (u8, String) {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&SSL_REQUEST).unwrap();
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).unwrap();
        stream.write_all(&next).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (answer[0], String::from_utf8_lossy(&rest).into_owned())
    })
    .await
    .unwrap()
}

/// The proxy's `tls:` setting for the PEM files `cert` and `key`.
fn tls_setting(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}",
        cert.display(),
        key.display()
    )
}

/// [`http_get`] off the async workers.
async fn get(addr: std::net::SocketAddr, path: &'static str) -> String {
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .unwrap()
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many sessions are running `query` now.
async fn running(su: &tokio_postgres::Client, query: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
        &[&query],
    )
    .await
    .unwrap()
    .get(0)
}

/// The value of metric line `name` (with labels), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The SQLSTATE and message a connection with `config` is refused with.
async fn refused_with(config: &tokio_postgres::Config) -> (String, String) {
    match config.connect(NoTls).await {
        Ok(_) => panic!("connected, but should have been refused"),
        Err(error) => refusal(error),
    }
}

/// A client configuration for the proxy at `port`: `role` on database appdb.
fn pg_config(port: u16, role: &str, password: Option<&str>) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(role)
        .dbname("appdb")
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    config
}

/// The SQLSTATE and message of a refused connection.
fn refusal(error: tokio_postgres::Error) -> (String, String) {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {error}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn session_user(client: &tokio_postgres::Client) -> String {
    first_value(client, "SELECT session_user").await
}

/// The first column of the first row `sql` returns, by the simple protocol.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_serves_tokio_postgres_with_a_service_account_token() {
    let w = world("session", "").await;
    let token = w.token("team-a");
    let client = w.connect("appdb-readonly", &token).await.unwrap();
    // Prepared statements and the extended protocol, in a session of its own.
    let statement = client
        .prepare("SELECT count(*) FROM items WHERE id > $1")
        .await
        .unwrap();
    for _ in 0..3 {
        let n: i64 = client.query_one(&statement, &[&0i32]).await.unwrap().get(0);
        assert_eq!(n, 3);
    }
    let user = session_user(&client).await;
    assert!(user.starts_with("v-"), "a pgwarden user: {user}");
    // Session state stays: a temporary table lives until the client leaves.
    client
        .batch_execute("SET application_name = 'mine'")
        .await
        .unwrap();
    let name: String = client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "mine");
    // The same identity shares the pool, so the same user.
    let second = w.connect("appdb-readonly", &token).await.unwrap();
    assert_eq!(session_user(&second).await, user);
    drop((client, second));
    // A connection given back was reset: the next client does not inherit the setting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = w.connect("appdb-readonly", &token).await.unwrap();
    let name: String = third
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "pgwarden-proxy");

    // Startup settings apply to the session, and are gone for the next client.
    let mut with_settings = w.config("appdb-readonly", &token);
    with_settings
        .options("-c statement_timeout=77 -c search_path=nowhere")
        .application_name("mine");
    let (configured, connection) = with_settings.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(
        first_value(&configured, "SHOW statement_timeout").await,
        "77ms"
    );
    assert_eq!(
        first_value(&configured, "SHOW search_path").await,
        "nowhere"
    );
    assert_eq!(
        first_value(&configured, "SHOW application_name").await,
        "mine"
    );
    drop(configured);

    // Cancel requests reach the query's server.
    let cancel = third.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { third.simple_query("SELECT pg_sleep(20)").await });
    let su = w.cluster.connect_superuser("appdb").await.unwrap();
    until("the query to run", Duration::from_secs(10), async || {
        running(&su, "SELECT pg_sleep(20)").await == 1
    })
    .await;
    cancel.cancel_query(NoTls).await.unwrap();
    let error = sleeping.await.unwrap().unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_closes_a_server_connection_whose_settings_a_client_changed() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    let su = w.cluster.connect_superuser("appdb").await.unwrap();
    let alive = |pid: i32| {
        let su = &su;
        async move {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        }
    };
    let pid_after = |client: tokio_postgres::Client, sql: &'static str| async move {
        let pid: i32 = first_value(&client, sql).await.parse().unwrap();
        (client, pid)
    };
    // A transaction that sets client_encoding (the server reports it) would hand LATIN1 to
    // the next client, who was told UTF8 and sends UTF-8: that connection closes instead.
    let changer = w.connect("appdb-readonly", &token).await.unwrap();
    let (changer, changed) = pid_after(
        changer,
        "SET client_encoding = 'LATIN1'; SELECT pg_backend_pid()",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(changed).await {
        assert!(
            Instant::now() < deadline,
            "the connection whose settings changed is closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One that changes no reported setting gives its connection back for reuse; so do a
    // SET LOCAL, reverted at commit, and a SET of the value the server already has.
    let plain = w.connect("appdb-readonly", &token).await.unwrap();
    let (plain, kept) = pid_after(plain, "SELECT pg_backend_pid()").await;
    let (plain, again) = pid_after(
        plain,
        "BEGIN; SET LOCAL client_encoding = 'LATIN1'; SELECT pg_backend_pid(); COMMIT",
    )
    .await;
    assert_eq!(again, kept, "reused after a SET LOCAL");
    let (plain, again) = pid_after(
        plain,
        "SET client_encoding = 'utf-8'; SELECT pg_backend_pid()",
    )
    .await;
    assert_eq!(again, kept, "reused after a SET of the same value");
    let (plain, again) = pid_after(plain, "SELECT pg_backend_pid()").await;
    assert_eq!(again, kept, "the idle connection is reused");
    assert_ne!(kept, changed);
    let metrics = w.metrics().await;
    assert_eq!(
        metric(&metrics, "pgwarden_proxy_settings_closes_total"),
        1.0
    );
    // Every client finds the pool's settings, whichever connection serves it (the changer's
    // own setting does not follow it either, as with any SET in transaction pooling).
    for client in [&plain, &changer] {
        for _ in 0..4 {
            assert_eq!(first_value(client, "SHOW client_encoding").await, "UTF8");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_three_server_connections_among_twelve_clients() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12i32 {
        let client = w.connect("appdb-readonly", &token).await.unwrap();
        tasks.spawn(async move {
            let mut pids = BTreeSet::new();
            for i in 0..30i32 {
                // Transactions that span several statements keep their server connection.
                let rows = client
                    .simple_query(
                        "BEGIN; SELECT pg_backend_pid(); SELECT count(*) FROM items; COMMIT",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("client {n}, transaction {i}: {e}"));
                let values: Vec<String> = rows
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap().to_string())
                        }
                        _ => None,
                    })
                    .collect();
                assert_eq!(values[1], "3");
                pids.insert(values[0].clone());
                // The extended protocol with an unnamed statement.
                let row = client
                    .query_typed("SELECT $1::int + 1", &[(&41i32, Type::INT4)])
                    .await
                    .unwrap_or_else(|e| panic!("client {n}, typed query {i}: {e}"));
                assert_eq!(row[0].get::<_, i32>(0), 42);
                // Named statements follow the client from server to server: every client
                // calls its first one `s0`, each for another query, and some queries are
                // the same for several clients.
                let statement = client
                    .prepare(&format!("SELECT $1::int + {}", n % 4))
                    .await
                    .unwrap_or_else(|e| panic!("client {n}, prepare {i}: {e}"));
                for j in 0..3 {
                    let row = client
                        .query_one(&statement, &[&(i * 10 + j)])
                        .await
                        .unwrap_or_else(|e| panic!("client {n}, prepared query {i}: {e}"));
                    assert_eq!(row.get::<_, i32>(0), i * 10 + j + n % 4);
                }
                if i % 2 == 0 {
                    // Dropped: tokio-postgres closes it.
                    drop(statement);
                }
            }
            pids
        });
    }
    let mut all = BTreeSet::new();
    for pids in tasks.join_all().await {
        all.extend(pids);
    }
    assert!(
        all.len() <= 3,
        "at most pool_size server connections: {all:?}"
    );
    // On the server, statements are named after their query: four queries, four statements
    // at most, whichever clients prepared them.
    let client = w.connect("appdb-readonly", &token).await.unwrap();
    let names = first_value(
        &client,
        "SELECT string_agg(name, ',') FROM pg_prepared_statements",
    )
    .await;
    let names: Vec<&str> = names.split(',').collect();
    assert!(
        (1..=4).contains(&names.len()) && names.iter().all(|n| n.starts_with("pgwarden_")),
        "{names:?}"
    );
    // Long results of small rows, the server slower than the proxy: reads end anywhere
    // inside a message.
    for n in 0..2 {
        let rows = client
            .query(
                "SELECT g, CASE WHEN g % 40 = 0 THEN pg_sleep(0.001) END \
                 FROM generate_series(1, 10000) g",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("long result {n}: {e}"));
        assert_eq!(rows.len(), 10000);
    }
    // DISCARD ALL drops them on its server: they are prepared again when needed.
    let statement = client.prepare("SELECT 7").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            client
                .query_one(&statement, &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            7
        );
        client.batch_execute("DISCARD ALL").await.unwrap();
    }
    let metrics = w.metrics().await;
    assert!(
        metric(&metrics, "pgwarden_proxy_server_connections_total") <= 3.0,
        "{metrics}"
    );
}

/// Sends the rows 1, 2 and 3 into `sink`, a `COPY … FROM STDIN` begun through the proxy, and
/// checks that the server copied three (`what` names the attempt in a failure).
async fn copy_three_rows(sink: tokio_postgres::CopyInSink<bytes::Bytes>, what: &str) {
    use futures::SinkExt;
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .unwrap();
    let rows = sink
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_through_the_extended_protocol_gives_its_connection_back() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    // Six clients, three server connections, all six finishing each round before the next:
    // every COPY's connection must come back with the end of its transaction.
    let round_done = std::sync::Arc::new(tokio::sync::Barrier::new(6));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let mut client = w.connect("appdb-readonly", &token).await.unwrap();
        let round_done = round_done.clone();
        tasks.spawn(async move {
            for round in 0..3 {
                let tx = client.transaction().await.unwrap();
                tx.batch_execute("CREATE TEMP TABLE copied (x int) ON COMMIT DROP")
                    .await
                    .unwrap();
                let sink = tx.copy_in("COPY copied FROM STDIN").await.unwrap();
                copy_three_rows(sink, &format!("client {n}, round {round}")).await;
                let sum: i64 = tx
                    .query_one("SELECT sum(x) FROM copied", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(sum, 6);
                tx.commit().await.unwrap();
                round_done.wait().await;
            }
        });
    }
    tasks.join_all().await;
}

/// A client of the wire protocol by hand, logged in through the proxy.
struct RawClient(std::net::TcpStream);

impl RawClient {
    /// Logs in to the proxy at `port` as `role` with `password`, up to its first
    /// `ReadyForQuery`.
    fn login(port: u16, role: &str, password: &str) -> RawClient {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&startup_packet(role)).unwrap();
        let mut client = RawClient(stream);
        let (tag, _) = client.next();
        assert_eq!(tag, b'R', "asked for a password");
        client.send(b'p', &[password.as_bytes(), b"\0"].concat());
        client.until(b'Z');
        client
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        self.0.write_all(&raw_message(tag, body)).unwrap();
    }

    /// The next message: its type and body.
    fn next(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 5];
        self.0.read_exact(&mut header).unwrap();
        let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.0.read_exact(&mut body).unwrap();
        (header[0], body)
    }

    /// Every message up to and including the next one of type `tag`.
    fn until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            let message = self.next();
            let done = message.0 == tag;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

fn raw_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![tag];
    message.extend(((body.len() + 4) as i32).to_be_bytes());
    message.extend(body);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_server_ended_never_hands_a_busy_connection_to_the_next_client() {
    let w = world("transaction", "").await;
    for pipelined in [false, true] {
        a_failed_copy_then_another_client(&w, pipelined).await;
    }
}

/// Client A copies a bad row in, so the server ends the copy itself (an error, then
/// ReadyForQuery; A never sends CopyDone or CopyFail), then sends a sync and a slow query
/// that opens a transaction: after the failure's answer, or `pipelined` behind the bad row.
/// Meanwhile client B of the same pool must get its own answer, outside A's transaction, and
/// A all of its own.
async fn a_failed_copy_then_another_client(w: &World, pipelined: bool) {
    let port = w.port();
    let (token_a, token_b) = (w.token("team-a"), w.token("team-a"));
    let (sent, a_has_sent) = tokio::sync::oneshot::channel();
    let a = tokio::task::spawn_blocking(move || {
        let mut a = RawClient::login(port, "writer", &token_a);
        a.send(
            b'Q',
            b"CREATE TEMP TABLE IF NOT EXISTS copied (x int); COPY copied FROM STDIN\0",
        );
        a.until(b'G');
        let bad_row = raw_message(b'd', b"not-a-number\n");
        let mut next = raw_message(b'S', &[]);
        next.extend(raw_message(
            b'Q',
            b"SELECT pg_sleep(1); BEGIN; SET LOCAL application_name = 'in-A'; SELECT 'A-secret'\0",
        ));
        let mut answers = if pipelined {
            a.0.write_all(&[bad_row, next].concat()).unwrap();
            a.until(b'Z')
        } else {
            a.0.write_all(&bad_row).unwrap();
            let failed = a.until(b'Z');
            a.0.write_all(&next).unwrap();
            failed
        };
        let _ = sent.send(());
        assert!(answers.iter().any(|(tag, _)| *tag == b'E'), "{answers:?}");
        // The sync's ReadyForQuery, then the query's.
        answers.extend(a.until(b'Z'));
        answers.extend(a.until(b'Z'));
        answers
    });
    a_has_sent.await.unwrap();
    let b = w.connect("writer", &token_b).await.unwrap();
    let row = b
        .query_one("SELECT 'B'::text, current_setting('application_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "B", "pipelined: {pipelined}");
    assert_ne!(
        row.get::<_, String>(1),
        "in-A",
        "B runs outside A's transaction (pipelined: {pipelined})"
    );
    let answers = a.await.unwrap();
    let rows: Vec<String> = answers
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert!(
        rows.iter().any(|row| row.contains("A-secret")),
        "pipelined: {pipelined}: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_token_was_revoked_refuses_its_clients_as_unauthorized() {
    use pgwarden_client::{Auth, Client};
    use secrecy::{ExposeSecret, SecretString};
    let w = world("transaction", "").await;
    let root = Client::new(
        &w.broker.base,
        Auth::Token(SecretString::from(pgwarden_testkit::broker::ROOT_TOKEN)),
    );
    let login = root
        .login_as(
            "kubernetes",
            "team-a",
            SecretString::from(w.token("team-a")),
        )
        .await
        .unwrap();
    let token = login.client_token.unwrap().expose_secret().to_string();
    let client = w.connect("appdb-readonly", &token).await.unwrap();
    assert_eq!(first_value(&client, "SELECT 'in'").await, "in");
    drop(client);
    // A logout: the token's leases, the pool's among them, are revoked with it.
    root.write(
        "auth/token/revoke-accessor",
        serde_json::json!({ "accessor": login.accessor }),
    )
    .await
    .unwrap();
    // Still let in while its identity is cached, but its queries get an authorization
    // error, not a connection failure that clients retry.
    let client = w.connect("appdb-readonly", &token).await.unwrap();
    let error = client.simple_query("SELECT 1").await.unwrap_err();
    let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(
        (db.code().code(), db.message()),
        (
            "28000",
            "system:serviceaccount:team-a:app may not use database/creds/appdb-readonly: \
             permission denied"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_copy_outside_a_transaction_keeps_its_connection_to_its_end() {
    let w = world("transaction", "").await;
    let admin = w
        .cluster
        .connect_as(APP_ADMIN, APP_ADMIN_PASSWORD, "appdb")
        .await
        .unwrap();
    // Made by pgwarden's administrator: the writer preset's grants extend to it.
    admin
        .batch_execute("CREATE TABLE copied_rows (x int)")
        .await
        .unwrap();
    let token = w.token("team-a");
    // Six clients on three server connections, each copying in autocommit (no transaction
    // holds the connection): each copy's connection must stay its own until the copy ends.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let client = w.connect("writer", &token).await.unwrap();
        tasks.spawn(async move {
            for round in 0..5 {
                let sink = client.copy_in("COPY copied_rows FROM STDIN").await.unwrap();
                copy_three_rows(sink, &format!("client {n}, round {round}")).await;
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("every copy ends");
    let copied: i64 = admin
        .query_one("SELECT count(*) FROM copied_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 6 * 5 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_leaves_no_query_running_on_the_server() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    let su = w.cluster.connect_superuser("appdb").await.unwrap();
    let sleeping = || running(&su, "SELECT pg_sleep(60)");
    // A client that sends a query and leaves, its connection task aborted (no Terminate):
    // once `left` says so.
    let config = w.config("appdb-readonly", &token);
    let leave_mid_query = move |left: tokio::sync::oneshot::Receiver<()>| {
        let config = config.clone();
        async move {
            let (client, connection) = config.connect(NoTls).await.unwrap();
            let connection = tokio::spawn(connection);
            let query =
                tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
            let _ = left.await;
            connection.abort();
            let _ = query.await;
        }
    };
    // Mid-query: its query is cancelled, not left to run for no one.
    let (leave, left) = tokio::sync::oneshot::channel();
    let leaving_one = tokio::spawn(leave_mid_query.clone()(left));
    until("the query to run", Duration::from_secs(20), async || {
        sleeping().await == 1
    })
    .await;
    leave.send(()).unwrap();
    leaving_one.await.unwrap();
    until(
        "the query to be cancelled",
        Duration::from_secs(20),
        async || sleeping().await == 0,
    )
    .await;
    // Queued for a slot (the three are held by open transactions): its query never runs.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let holder = w.connect("appdb-readonly", &token).await.unwrap();
        holder.batch_execute("BEGIN").await.unwrap();
        holders.push(holder);
    }
    let made = metric(
        &w.metrics().await,
        "pgwarden_proxy_server_connections_total",
    );
    let mut leaving = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (leave, left) = tokio::sync::oneshot::channel();
        leaving.spawn(leave_mid_query.clone()(left));
        tokio::time::sleep(Duration::from_millis(200)).await;
        leave.send(()).unwrap();
    }
    leaving.join_all().await;
    for holder in &holders {
        holder.batch_execute("COMMIT").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sleeping().await, 0);
    assert_eq!(
        metric(
            &w.metrics().await,
            "pgwarden_proxy_server_connections_total"
        ),
        made,
        "no server connection was used for a client that had left"
    );
    let servers = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgwarden-proxy'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(servers <= 3, "{servers} server connections for a pool of 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_request_never_stops_the_next_clients_query() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    // Three clients keep the pool's three server connections busy with short queries.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut others = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let client = w.connect("appdb-readonly", &token).await.unwrap();
        let stop = stop.clone();
        others.spawn(async move {
            let mut queries = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .simple_query("SELECT pg_sleep(0.005)")
                    .await
                    .unwrap_or_else(|e| panic!("after {queries} queries, another's cancel: {e}"));
                queries += 1;
            }
            queries
        });
    }
    // Meanwhile a fourth cancels its own queries around the moment they end.
    let canceller = std::sync::Arc::new(w.connect("appdb-readonly", &token).await.unwrap());
    let mut cancelled = 0;
    for round in 0..150u64 {
        let client = canceller.clone();
        let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(0.01)").await });
        tokio::time::sleep(Duration::from_micros(8_000 + (round * 37) % 5_000)).await;
        canceller.cancel_token().cancel_query(NoTls).await.unwrap();
        if let Err(e) = query.await.unwrap() {
            assert_eq!(e.as_db_error().unwrap().code().code(), "57014");
            cancelled += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: Vec<u32> = others.join_all().await;
    assert!(done.iter().all(|q| *q > 20), "{done:?}");
    assert!(
        cancelled > 0,
        "no cancel request arrived in time to cancel anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_cleanly_and_others_keep_being_served() {
    let w = world("transaction", "").await;
    let good = w
        .connect("appdb-readonly", &w.token("team-a"))
        .await
        .unwrap();

    // A token pgwarden refuses.
    let forged = w
        .issuer
        .service_account_token(TestKey::Ec1, AUD, "team-a", "app");
    let (code, message) = refusal(w.connect("appdb-readonly", &forged).await.unwrap_err());
    assert_eq!(code, "28P01");
    assert!(
        message.starts_with("password authentication failed for user \"appdb-readonly\": pgwarden refused the token: auth/kubernetes: "),
        "{message}"
    );
    // An expired token.
    let claims = pgwarden_testkit::issuer::service_account_claims(
        &w.issuer.issuer(),
        AUD,
        "team-a",
        "app",
        -120,
    );
    let expired = pgwarden_testkit::issuer::sign(TestKey::Rsa1, &claims);
    let (code, message) = refusal(w.connect("appdb-readonly", &expired).await.unwrap_err());
    assert_eq!(code, "28P01");
    assert!(message.to_lowercase().contains("expired"), "{message}");
    // Not a token at all.
    let (code, _) = refusal(w.connect("appdb-readonly", "hunter2").await.unwrap_err());
    assert_eq!(code, "28P01");
    // A token of another namespace: logs in, but policy gives it nothing.
    let (code, message) = refusal(
        w.connect("appdb-readonly", &w.token("team-b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "28000");
    assert!(
        message.starts_with(
            "system:serviceaccount:team-b:app may not use database/creds/appdb-readonly: "
        ),
        "{message}"
    );
    // Settings that could not follow the client from one server connection to the next.
    let mut with_options = w.config("appdb-readonly", &w.token("team-a"));
    with_options.options("-c search_path=x");
    let (code, message) = refused_with(&with_options).await;
    assert_eq!(code, "08P01");
    assert!(
        message.starts_with("startup parameter(s) search_path=x cannot follow a client"),
        "{message}"
    );
    // Those a driver sends in another spelling of the server's values (pgJDBC's DateStyle=ISO
    // of "ISO, MDY", and extra_float_digits=2, whose output is the default's) are taken; the
    // session has the server's values, which the client asked for in effect.
    let mut as_jdbc = w.config("appdb-readonly", &w.token("team-a"));
    as_jdbc.options("-c DateStyle=ISO -c extra_float_digits=2");
    let (client, connection) = as_jdbc.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(first_value(&client, "SHOW DateStyle").await, "ISO, MDY");
    assert_eq!(first_value(&client, "SHOW extra_float_digits").await, "1");
    // A user that is no role name.
    let (code, message) = refusal(
        w.connect("../../sys", &w.token("team-a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "28000",
            "user \"../../sys\" must name a pgwarden role as <role> or <mount>/<role> (a letter or digit, then letters, digits, _ . -)"
        )
    );

    let port = w.port();
    // An oversized startup packet: PostgreSQL's own words.
    let mut oversized = 20_000i32.to_be_bytes().to_vec();
    oversized.extend(196_608i32.to_be_bytes());
    oversized.extend(vec![b'a'; 100]);
    let answer = tokio::task::spawn_blocking(move || exchange(port, &oversized))
        .await
        .unwrap();
    assert!(
        answer.contains("C08P01") && answer.contains("invalid length of startup packet"),
        "{answer:?}"
    );
    // SSLRequest asked again after its answer: PostgreSQL's code.
    let (ssl, again) = after_ssl_request(port, SSL_REQUEST.to_vec()).await;
    assert_eq!(ssl, b'N');
    assert!(
        again.contains("C0A000") && again.contains("SSLRequest or GSSENCRequest sent again"),
        "{again:?}"
    );
    // A GSSENCRequest after SSL was refused is answered (libpq may try both).
    let (_, gss) = after_ssl_request(port, vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await;
    assert_eq!(gss, "N");
    // Garbage.
    let answer =
        tokio::task::spawn_blocking(move || exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
    assert!(answer.contains("C08P01"), "{answer:?}");
    // A client that connects and says nothing is closed after client_login_timeout (2 s).
    let silent = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        started.elapsed()
    });
    let waited = silent.await.unwrap();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Through all of it the good client was served.
    assert_eq!(first_value(&good, "SELECT 1").await, "1");
    let metrics = w.metrics().await;
    for (reason, at_least) in [
        ("invalid_token", 2.0),
        ("not_allowed", 1.0),
        ("bad_startup", 3.0),
        ("login_timeout", 1.0),
    ] {
        let count = metric(
            &metrics,
            &format!("pgwarden_proxy_refusals_total{{reason=\"{reason}\"}}"),
        );
        assert!(count >= at_least, "{reason}: {count}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_replaced_under_load_without_a_failed_query() {
    let w = world("transaction", "").await;
    let token = w.token("team-a");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = w.connect("short", &token).await.unwrap();
        tasks.spawn(async move {
            let mut users = BTreeSet::new();
            let mut queries = 0;
            while Instant::now() < deadline {
                users.insert(session_user(&client).await);
                queries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (users, queries)
        });
    }
    let mut users = BTreeSet::new();
    for (seen, queries) in tasks.join_all().await {
        assert!(queries > 100, "{queries}");
        users.extend(seen);
    }
    assert!(users.len() >= 3, "several credentials in turn: {users:?}");
    let metrics = w.metrics().await;
    assert!(
        metric(&metrics, "pgwarden_proxy_rotations_total") >= 2.0,
        "{metrics}"
    );
    // Each replaced user was revoked once its last connection closed (not left to expire).
    assert!(
        metric(&metrics, "pgwarden_proxy_leases_revoked_total") >= 1.0,
        "{metrics}"
    );
    let mut gone = 0;
    for user in &users {
        if !w.cluster.role_exists(user).await.unwrap() {
            gone += 1;
        }
    }
    assert!(
        gone >= users.len() - 2,
        "replaced users dropped: {gone} of {users:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_then_revokes_every_lease() {
    let mut w = world("session", "").await;
    let token = w.token("team-a");
    let idle = w.connect("appdb-readonly", &token).await.unwrap();
    let busy = w.connect("appdb-readonly", &token).await.unwrap();
    let user = session_user(&busy).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let proxy = w.proxy.take().unwrap();
    let metrics_addr = proxy.metrics_addr;
    let port = proxy.addr.unwrap().port();
    let shutdown = tokio::spawn(proxy.shutdown());
    // Soon not ready any more, and no new clients.
    until(
        "/readyz to answer 503",
        Duration::from_secs(10),
        async || {
            let ready = get(metrics_addr, "/readyz").await;
            ready.starts_with("HTTP/1.0 503") || ready.starts_with("HTTP/1.1 503")
        },
    )
    .await;
    until(
        "the listener to close",
        Duration::from_secs(10),
        async || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
    )
    .await;
    // The idle session was closed with PostgreSQL's shutdown error.
    let error = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        error.is_closed()
            || error
                .as_db_error()
                .is_some_and(|e| e.code().code() == "57P01"),
        "{error}"
    );
    // The open transaction finishes.
    busy.batch_execute("SELECT count(*) FROM items; COMMIT")
        .await
        .unwrap();
    shutdown.await.unwrap();
    assert!(busy.simple_query("SELECT 1").await.is_err());
    assert!(
        !w.cluster.role_exists(&user).await.unwrap(),
        "the lease was revoked at exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_work_over_tcp_and_the_unix_socket() {
    let w = world("transaction", "").await;
    let session = w.start_proxy("session", "").await;
    let token = w.token("team-a");
    for (mode, port) in [
        ("transaction", w.port()),
        ("session", session.addr.unwrap().port()),
    ] {
        psql_and_psycopg(&w, port, &token, mode);
    }
    // The socket is open to local users as PostgreSQL's is by default (the token still
    // decides); a second proxy cannot take over a socket another one listens on.
    use std::os::unix::fs::PermissionsExt;
    let socket = w.socket_dir.path().join(format!(".s.PGSQL.{}", w.port()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o777);
    let dir = tempfile::tempdir().unwrap();
    let unix_only = |socket_mode: &str| {
        ProxyConfig::parse(&format!(
            "address: \"{}\"\nlisten: null\nunix_socket_dir: \"{}\"\nunix_socket_mode: \"{socket_mode}\"\n\
             metrics_listen: 127.0.0.1:0\nauth: {{ identity: {{ logins: [{{mount: kubernetes, role: team-a}}] }} }}\n",
            w.broker.base,
            dir.path().display()
        ))
        .unwrap()
    };
    let first = pgwarden_proxy::start(unix_only("0770")).await.unwrap();
    let path = dir.path().join(".s.PGSQL.5432");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o770
    );
    let error = pgwarden_proxy::start(unix_only("0770"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        error,
        format!(
            "cannot listen on {}: another process is listening there",
            path.display()
        )
    );
    first.shutdown().await;
    // A socket file left behind by a proxy that is gone is replaced.
    let again = pgwarden_proxy::start(unix_only("0700")).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
    again.shutdown().await;
}

/// psql over TCP and the Unix socket, then psycopg, through the proxy at `port`.
fn psql_and_psycopg(w: &World, port: u16, token: &str, mode: &str) {
    let psql = w.cluster.bin_dir().join("psql");
    for host in [
        "127.0.0.1".to_string(),
        w.socket_dir.path().display().to_string(),
    ] {
        let out = std::process::Command::new(&psql)
            .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM items"])
            .env("PGHOST", &host)
            .env("PGPORT", port.to_string())
            .env("PGUSER", "appdb-readonly")
            .env("PGDATABASE", "appdb")
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql via {host} ({mode}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    }
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if !python.exists() && std::env::var_os("PGWARDEN_REQUIRE_PSYCOPG").is_none() {
        eprintln!("skipping psycopg: no .venv (scripts/test creates it)");
        return;
    }
    let script = format!(
        r#"
import psycopg
with psycopg.connect(host="127.0.0.1", port={port}, user="appdb-readonly", dbname="appdb", password={token:?}, sslmode="disable") as conn:
    for i in range(10):
        # Server-side binding through the extended protocol, unnamed statements.
        n = conn.execute("SELECT count(*) FROM items WHERE id > %s", (0,), prepare=False).fetchone()[0]
        assert n == 3, n
        # Named prepared statements (psycopg's _pg3_0, ...), also in transaction pooling.
        n = conn.execute("SELECT count(*) + %s FROM items", (i,), prepare=True).fetchone()[0]
        assert n == 3 + i, n
    # A pipeline ends with Sync then Flush; the next query is a simple one.
    with conn.pipeline():
        conn.execute("SELECT %s::int", (1,))
    assert conn.execute("select 42").fetchone()[0] == 42
    # A full statement cache closes its oldest statements (libpq 17+: Close messages).
    conn.prepared_max = 2
    for round in range(2):
        for q in range(5):
            n = conn.execute(f"SELECT {{q}} + %s::int", (round,), prepare=True).fetchone()[0]
            assert n == q + round, n
    with conn.transaction():
        conn.execute("SELECT 1")
print("ok")
"#
    );
    let out = std::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psycopg ({mode}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// A TLS connector for tokio-postgres that trusts only the CA `ca_pem`.
fn trusting(ca_pem: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_served_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    // Each file replaced whole, as kubelet updates a mounted Secret.
    let install = |ca: &pgwarden_testkit::tls::TestCa| {
        for (path, pem) in [(&cert, &ca.cert_pem), (&key, &ca.key_pem)] {
            let partial = path.with_extension("new");
            std::fs::write(&partial, pem).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
    };
    let first = pgwarden_testkit::tls::TestCa::localhost();
    install(&first);
    let tls = tls_setting(&cert, &key);
    let w = world("session", &tls).await;
    let token = w.token("team-a");
    let mut pg = w.config("appdb-readonly", &token);
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let session = |ca: String| {
        let pg = pg.clone();
        async move { pg.connect(trusting(&ca)).await.map(drop) }
    };
    session(first.ca_pem.clone())
        .await
        .expect("the first certificate is served");

    let second = pgwarden_testkit::tls::TestCa::localhost();
    install(&second);
    until(
        "the renewed certificate to be served",
        Duration::from_secs(20),
        async || session(second.ca_pem.clone()).await.is_ok(),
    )
    .await;
    let refused = session(first.ca_pem.clone()).await.unwrap_err();
    assert!(
        // Both test CAs have one name: the old one is found, and its signature fails.
        format!("{refused:?}").contains("InvalidCertificate(BadSignature)"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_served_and_a_sixty_second_pgbench_survives_rotations() {
    let ca = pgwarden_testkit::tls::TestCa::localhost();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&cert, &ca.cert_pem).unwrap();
    std::fs::write(&key, &ca.key_pem).unwrap();
    let tls = tls_setting(&cert, &key);
    let w = world("transaction", &tls).await;
    let token = w.token("team-a");

    // TLS, the proxy's certificate verified.
    let mut pg = w.config("appdb-readonly", &token);
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = pg.connect(trusting(&ca.ca_pem)).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(
        first_value(&client, "SELECT count(*) FROM items").await,
        "3"
    );

    // pgbench for 60 s on leases of 9 s (max 18 s): the credential is replaced about every
    // 16 s under it, and not one transaction fails. Its statements are named prepared ones
    // (`-M prepared`), so they are prepared again on every new server connection.
    let script = files.path().join("items.sql");
    std::fs::write(&script, "SELECT count(*) FROM items;\n").unwrap();
    let out = std::process::Command::new(w.cluster.bin_dir().join("pgbench"))
        .env("PGPASSWORD", &token)
        .env("PGSSLMODE", "disable")
        .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "60"])
        .args(["-h", "127.0.0.1"])
        .args(["-p", &w.port().to_string(), "-U", "rotating", "-f"])
        .arg(&script)
        .arg("appdb")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {}{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {report}"))
    };
    assert!(
        number("number of transactions actually processed: ") > 1000,
        "{report}"
    );
    if report.contains("number of failed transactions") {
        assert_eq!(number("number of failed transactions: "), 0, "{report}");
    }
    let metrics = w.metrics().await;
    // About three in 60 s; two leave room for a loaded machine.
    assert!(
        metric(&metrics, "pgwarden_proxy_rotations_total") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_only_the_principal_policy_allowed() {
    let w = world("session", "").await;
    let as_dba = w
        .issuer
        .person_token(TestKey::Rsa1, AUD, "ola@example.com", &["dba"]);
    let client = w.connect("appdb-readonly", &as_dba).await.unwrap();
    assert_eq!(
        first_value(&client, "SELECT count(*) FROM items").await,
        "3"
    );
    // The same person without the group that granted it: the pool made for her with the
    // group is not hers now.
    let without = w
        .issuer
        .person_token(TestKey::Rsa1, AUD, "ola@example.com", &["dev"]);
    let (code, message) = refusal(w.connect("appdb-readonly", &without).await.unwrap_err());
    assert_eq!(code, "28000");
    assert!(
        message.starts_with("user:ola@example.com may not use database/creds/appdb-readonly: "),
        "{message}"
    );
    // A database other than the role's.
    let mut other = w.config("appdb-readonly", &as_dba);
    other.dbname("postgres");
    assert_eq!(
        refused_with(&other).await,
        (
            "3D000".to_string(),
            "role \"appdb-readonly\" serves database \"appdb\", not \"postgres\"".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_picks_the_primary_or_the_standby() {
    let primary = PgCluster::start_with_appdb().await.unwrap();
    if !primary.can_replicate() {
        eprintln!("SKIPPED: no pg_basebackup beside these PostgreSQL binaries (npm builds)");
        return;
    }
    let replica = tokio::task::block_in_place(|| primary.start_replica()).unwrap();
    // The standby first in the list.
    let url = format!(
        "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{},127.0.0.1:{}/appdb?sslmode=disable",
        replica.port(),
        primary.port()
    );
    let w = world_with(
        primary,
        &url,
        "transaction",
        "upstream: { target_session_attrs: read-write }",
        "",
    )
    .await;
    let token = w.token("team-a");
    let writer = w.connect("appdb-readonly", &token).await.unwrap();
    assert_eq!(
        first_value(&writer, "SELECT pg_is_in_recovery()").await,
        "f"
    );
    // Per role: the short-lived readonly role reads from the standby.
    let routed = w
        .start_proxy(
            "transaction",
            "upstream: { target_session_attrs: read-write, role_target_session_attrs: { short: read-only } }",
        )
        .await;
    for (role, expected) in [("short", "t"), ("appdb-readonly", "f")] {
        let client = connect_to(&routed, role, &token).await;
        assert_eq!(
            first_value(&client, "SELECT pg_is_in_recovery()").await,
            expected,
            "{role}"
        );
    }
    routed.shutdown().await;
    for (attrs, expected) in [("read-only", "t"), ("prefer-standby", "t"), ("any", "t")] {
        let proxy = w
            .start_proxy(
                "transaction",
                &format!("upstream: {{ target_session_attrs: {attrs} }}"),
            )
            .await;
        let client = connect_to(&proxy, "appdb-readonly", &token).await;
        let standby = first_value(&client, "SELECT pg_is_in_recovery()").await;
        assert_eq!(standby, expected, "{attrs}");
        drop(client);
        proxy.shutdown().await;
    }
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_acts_as_its_pod_and_limits_answer_in_postgresql_terms() {
    let w = world("session", "").await;
    let token_file = w.socket_dir.path().join("token");
    std::fs::write(&token_file, w.token("team-a")).unwrap();
    let config = ProxyConfig::parse(&format!(
        "address: \"{}\"\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\npool_size: 1\n\
         max_client_conn: 2\nquery_wait_timeout: 1s\n\
         auth: {{ sidecar: {{ role: team-a, token_file: \"{}\" }} }}\n",
        w.broker.base,
        token_file.display()
    ))
    .unwrap();
    let sidecar = pgwarden_proxy::start(config).await.unwrap();
    let config = pg_config(sidecar.addr.unwrap().port(), "appdb-readonly", None);
    // No password: a local client is the pod, and the proxy logs in with the pod's token.
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert!(session_user(&client).await.starts_with("v-"));
    // pool_size 1 in session mode: the next client waits query_wait_timeout, then 53300.
    let (code, message) = refused_with(&config).await;
    assert_eq!(code, "53300");
    assert!(
        message.starts_with("no server connection free within 1s"),
        "{message}"
    );
    // max_client_conn 2: with one client in and one that says nothing, a third is refused.
    let port = sidecar.addr.unwrap().port();
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let clients_come_to = async |count: f64, what: &str| {
        until(what, Duration::from_secs(10), async || {
            metric(
                &get(sidecar.metrics_addr, "/metrics").await,
                "pgwarden_proxy_clients",
            ) == count
        })
        .await;
    };
    clients_come_to(2.0, "the silent client to be counted").await;
    assert_eq!(
        refused_with(&config).await,
        (
            "53300".to_string(),
            "sorry, too many clients already".to_string()
        )
    );
    // One that asks for SSL first (libpq's default) reads it after the answer to that, as
    // PostgreSQL sends it.
    let answer = after_ssl_request(port, startup_packet("appdb-readonly")).await;
    assert_eq!(answer.0, b'N');
    assert!(
        answer.1.starts_with('E')
            && answer.1.contains("C53300")
            && answer.1.contains("Msorry, too many clients already"),
        "{answer:?}"
    );
    // A client being turned away holds no slot: with one lingering after its SSLRequest, the
    // slot the first client frees serves the next.
    let mut lingering = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    lingering.write_all(&SSL_REQUEST).unwrap();
    lingering.read_exact(&mut [0u8; 1]).unwrap();
    drop(client);
    clients_come_to(1.0, "the first client to leave").await;
    let (next, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert!(session_user(&next).await.starts_with("v-"));
    drop(lingering);
    // A sidecar listening beyond loopback is refused at start.
    let wide =
        ProxyConfig::parse("address: x\nlisten: 0.0.0.0:6432\nauth: { sidecar: { role: app } }\n");
    assert_eq!(
        wide.unwrap_err(),
        "a sidecar serves its own pod only: listen on loopback (e.g. 127.0.0.1:6432), not 0.0.0.0:6432"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_reaches_a_pgwarden_served_over_tls_through_its_ca_file() {
    let ca = pgwarden_testkit::tls::TestCa::localhost();
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name);
    for (name, pem) in [
        ("tls.crt", &ca.cert_pem),
        ("tls.key", &ca.key_pem),
        ("ca.pem", &ca.ca_pem),
    ] {
        std::fs::write(path(name), pem).unwrap();
    }
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let url = cluster.templated_url("appdb");
    let tls = format!(
        "http: {{ tls: {{ cert: \"{}\", key: \"{}\" }} }}",
        path("tls.crt").display(),
        path("tls.key").display()
    );
    let w = world_with(cluster, &url, "session", "", &tls).await;
    let https = format!("https://{}", w.broker.server.as_ref().unwrap().addr);
    let token_file = path("token");
    std::fs::write(&token_file, w.token("team-a")).unwrap();
    let sidecar = |ca_file: &str| {
        ProxyConfig::parse(&format!(
            "address: \"{https}\"\n{ca_file}\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n\
             auth: {{ sidecar: {{ role: team-a, token_file: \"{}\" }} }}\n",
            token_file.display()
        ))
        .unwrap()
    };
    let trusting = pgwarden_proxy::start(sidecar(&format!(
        "ca_file: \"{}\"",
        path("ca.pem").display()
    )))
    .await
    .unwrap();
    let config = pg_config(trusting.addr.unwrap().port(), "appdb-readonly", None);
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert!(session_user(&client).await.starts_with("v-"));

    // Trusting only the system's roots, the proxy cannot log in, and says why.
    let untrusting = pgwarden_proxy::start(sidecar("")).await.unwrap();
    let config = pg_config(untrusting.addr.unwrap().port(), "appdb-readonly", None);
    assert_eq!(
        refused_with(&config).await,
        (
            "08006".to_string(),
            format!(
                "cannot get a credential from pgwarden: cannot reach pgwarden at {https}: error \
                 sending request for url ({https}/v1/auth/kubernetes/login): client error \
                 (Connect): invalid peer certificate: UnknownIssuer (pgwarden's certificate is \
                 not signed by a CA this client trusts: give the CA's certificate with \
                 --ca-cert, PGWARDEN_CACERT or ca_file)"
            )
        )
    );
    let missing = pgwarden_proxy::start(sidecar("ca_file: /nonexistent/ca.pem")).await;
    assert_eq!(
        missing.err(),
        Some(
            "ca_file: cannot use the CA file /nonexistent/ca.pem: No such file or directory \
             (os error 2)"
                .to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_identity_role_acts_as_the_role_named_after_the_client() {
    let w = world("transaction", "").await;
    // The database owner's per-identity grants, as PostgREST setups have them.
    w.cluster
        .create_identity_role("appdb", "system:serviceaccount:team-a:app")
        .await
        .unwrap();
    let client = w.connect("mine", &w.token("team-a")).await.unwrap();
    assert_eq!(
        first_value(&client, "SELECT current_user").await,
        "system:serviceaccount:team-a:app"
    );
    assert_eq!(
        first_value(&client, "SELECT count(*) FROM items").await,
        "3"
    );
    let error = client
        .simple_query("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "42501");
    // Another service account has no such role: a clear refusal, not a user without rights.
    let other = w
        .issuer
        .service_account_token(TestKey::Rsa1, AUD, "team-a", "other");
    let (code, message) = refusal(w.connect("mine", &other).await.unwrap_err());
    assert_eq!(code, "28000");
    assert!(
        message.starts_with("system:serviceaccount:team-a:other may not use database/creds/mine: "),
        "{message}"
    );
}
