//! Database drivers: one pooled connection per configured database, and the
//! few operations the engine needs (create, renew, revoke a user; set a
//! password), each with the plugin's default statements.
//!
//! Errors are plain messages without the connection URL, and any password
//! that went into a statement is scrubbed from them: a database may echo a
//! fragment of a failing statement.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool as PgPool, RecyclingMethod, Runtime,
};
use mysql_async::prelude::Queryable;
use tokio_postgres::NoTls;

use super::template::{
    quote_ident, quote_literal, render_sql, split_statements, Dialect, Kind, Var,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to a database; the message is safe to show.
#[derive(Debug)]
pub(crate) struct DbError(pub(crate) String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl DbError {
    fn scrub(mut self, secrets: &[&str]) -> Self {
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            self.0 = self.0.replace(s, "*****");
        }
        self
    }
}

impl From<String> for DbError {
    fn from(s: String) -> Self {
        DbError(s)
    }
}

fn pg_err(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError(format!("{}: {}", db.severity(), db.message())),
        None => DbError(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> DbError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            DbError("timed out connecting to the database".into())
        }
        other => DbError(other.to_string()),
    }
}

fn my_err(e: mysql_async::Error) -> DbError {
    match e {
        mysql_async::Error::Server(s) => {
            DbError(format!("{} ({}): {}", s.code, s.state, s.message))
        }
        mysql_async::Error::Url(_) => DbError("invalid connection_url".into()),
        other => DbError(other.to_string()),
    }
}

fn redis_err(e: redis::RedisError) -> DbError {
    DbError(e.to_string())
}

/// The kind of database a `plugin_name` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginKind {
    Postgres,
    /// MySQL/MariaDB; the legacy plugin allows 16-character user names.
    MySql {
        legacy: bool,
    },
    Redis,
}

impl PluginKind {
    pub(crate) fn from_plugin_name(name: &str) -> Option<Self> {
        match name {
            "postgresql-database-plugin" => Some(PluginKind::Postgres),
            "mysql-database-plugin"
            | "mysql-aurora-database-plugin"
            | "mysql-rds-database-plugin" => Some(PluginKind::MySql { legacy: false }),
            "mysql-legacy-database-plugin" => Some(PluginKind::MySql { legacy: true }),
            "redis-database-plugin" => Some(PluginKind::Redis),
            _ => None,
        }
    }

    /// The longest user name the database accepts.
    pub(crate) fn username_limit(self) -> usize {
        match self {
            PluginKind::Postgres | PluginKind::Redis => 63,
            PluginKind::MySql { legacy: false } => 32,
            PluginKind::MySql { legacy: true } => 16,
        }
    }

    /// Vault's default user name layout for this database (lower-cased
    /// and cut to [`Self::username_limit`] by the caller).
    pub(crate) fn default_username_template(self) -> &'static str {
        match self {
            PluginKind::Postgres | PluginKind::Redis => {
                "v-{{.DisplayName | truncate 8}}-{{.RoleName | truncate 8}}-{{random 20}}-{{unix_time}}"
            }
            PluginKind::MySql { legacy: false } => {
                "v-{{.DisplayName | truncate 8}}-{{.RoleName | truncate 8}}-{{random 20}}"
            }
            PluginKind::MySql { legacy: true } => "v-{{.RoleName | truncate 4}}-{{random 9}}",
        }
    }
}

/// What a pool is built from: the configuration with its secrets.
pub(crate) struct Settings<'a> {
    pub(crate) kind: PluginKind,
    pub(crate) connection_url: &'a str,
    pub(crate) username: &'a str,
    pub(crate) password: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) max_open_connections: usize,
    /// How long one connection may be reused (Vault's
    /// `max_connection_lifetime`); zero: as long as it works. A connection
    /// stays with the server it reached and, on some servers, with the
    /// session state it logged in with: a lifetime lets a fail-over or a
    /// changed account reach the engine without a `reset`.
    pub(crate) max_connection_lifetime: Duration,
}

/// A database connection pool of one configuration.
pub(crate) enum Db {
    Postgres(PgPool),
    MySql(mysql_async::Pool),
    Redis(Box<RedisDb>),
}

pub(crate) struct RedisDb {
    client: redis::Client,
    /// The admin user, for root rotation: `ACL SETUSER` needs a name.
    username: String,
    /// The shared connection and when it was opened.
    conn: tokio::sync::Mutex<Option<(redis::aio::MultiplexedConnection, std::time::Instant)>>,
    max_lifetime: Duration,
}

/// Fills `{{username}}`/`{{password}}` in a template field: the whole
/// field is the placeholder (the common case) or contains it.
fn fill(field: &str, username: &str, password: &str) -> String {
    field
        .replace("{{username}}", username)
        .replace("{{password}}", password)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `postgres://` URLs and `key=value` strings, with the credentials put in
/// after parsing so that no character in them can change the parse.
fn pg_config(s: &Settings<'_>) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg = tokio_postgres::Config::from_str(s.connection_url)
        .map_err(|_| DbError("connection_url: not a valid PostgreSQL connection string".into()))?;
    let user = match cfg.get_user() {
        Some(u) => fill(u, s.username, s.password),
        None => s.username.to_string(),
    };
    if !user.is_empty() {
        cfg.user(user);
    }
    let password = match cfg.get_password() {
        Some(p) => fill(&String::from_utf8_lossy(p), s.username, s.password),
        None => s.password.to_string(),
    };
    if !password.is_empty() {
        cfg.password(password);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(cfg)
}

/// `mysql://user:pass@host:port/db` URLs and Go driver DSNs
/// (`user:pass@tcp(host:port)/db`), which is what Vault users have.
fn mysql_opts(s: &Settings<'_>) -> Result<mysql_async::OptsBuilder, DbError> {
    let bad = || DbError("connection_url: not a valid MySQL DSN or URL".into());
    let (rest, url_form) = match s.connection_url.strip_prefix("mysql://") {
        Some(r) => (r, true),
        None => (s.connection_url, false),
    };
    let (creds, target) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (user, pass) = match creds {
        None => (s.username.to_string(), s.password.to_string()),
        Some(c) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            let dec = |v: &str| {
                if url_form {
                    percent_decode(v)
                } else {
                    v.to_string()
                }
            };
            let u = fill(&dec(u), s.username, s.password);
            let p = if p.is_empty() {
                s.password.to_string()
            } else {
                fill(&dec(p), s.username, s.password)
            };
            (u, p)
        }
    };
    let target = target.split('?').next().unwrap_or("");
    let (addr, db) = if url_form {
        target.split_once('/').unwrap_or((target, ""))
    } else if let Some(r) = target.strip_prefix("tcp(") {
        let (a, after) = r.split_once(')').ok_or_else(bad)?;
        (a, after.strip_prefix('/').unwrap_or(after))
    } else if target.starts_with("unix(") {
        return Err(DbError(
            "connection_url: unix sockets are not supported".into(),
        ));
    } else if let Some(db) = target.strip_prefix('/') {
        ("127.0.0.1:3306", db)
    } else {
        return Err(bad());
    };
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (addr, 3306),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let constraints = mysql_async::PoolConstraints::new(0, s.max_open_connections.max(1))
        .ok_or_else(|| DbError("max_open_connections: invalid".into()))?;
    Ok(mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user((!user.is_empty()).then_some(user))
        .pass((!pass.is_empty()).then_some(pass))
        .db_name((!db.is_empty()).then(|| db.to_string()))
        // The driver would otherwise switch to the server's unix socket,
        // where the account's host part differs.
        .prefer_socket(false)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                .with_abs_conn_ttl(
                    (!s.max_connection_lifetime.is_zero()).then_some(s.max_connection_lifetime),
                ),
        ))
}

impl Db {
    /// Builds the pool; connects lazily (see [`Db::verify`]).
    pub(crate) fn open(s: &Settings<'_>) -> Result<Db, DbError> {
        match s.kind {
            PluginKind::Postgres => {
                let mgr = Manager::from_config(
                    pg_config(s)?,
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let mut builder = PgPool::builder(mgr);
                let lifetime = s.max_connection_lifetime;
                if !lifetime.is_zero() {
                    builder = builder.pre_recycle(Hook::sync_fn(move |_, metrics| {
                        if metrics.age() >= lifetime {
                            Err(HookError::message("max_connection_lifetime reached"))
                        } else {
                            Ok(())
                        }
                    }));
                }
                let pool = builder
                    .max_size(s.max_open_connections.max(1))
                    .runtime(Runtime::Tokio1)
                    .create_timeout(Some(CONNECT_TIMEOUT))
                    .wait_timeout(Some(Duration::from_secs(30)))
                    .build()
                    .map_err(|e| DbError(format!("building the connection pool: {e}")))?;
                Ok(Db::Postgres(pool))
            }
            PluginKind::MySql { .. } => Ok(Db::MySql(mysql_async::Pool::new(mysql_opts(s)?))),
            PluginKind::Redis => {
                if s.tls {
                    return Err(DbError(
                        "tls: TLS connections to Redis are not supported".into(),
                    ));
                }
                if s.host.is_empty() {
                    return Err(DbError("host: required for redis".into()));
                }
                let mut redis_settings = redis::RedisConnectionInfo::default();
                if !s.username.is_empty() {
                    redis_settings = redis_settings.set_username(s.username);
                }
                if !s.password.is_empty() {
                    redis_settings = redis_settings.set_password(s.password);
                }
                let info =
                    redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
                        s.host.to_string(),
                        if s.port == 0 { 6379 } else { s.port },
                    ))
                    .map_err(redis_err)?
                    .set_redis_settings(redis_settings);
                let client = redis::Client::open(info).map_err(redis_err)?;
                Ok(Db::Redis(Box::new(RedisDb {
                    client,
                    username: if s.username.is_empty() {
                        "default".into()
                    } else {
                        s.username.to_string()
                    },
                    conn: tokio::sync::Mutex::new(None),
                    max_lifetime: s.max_connection_lifetime,
                })))
            }
        }
    }

    /// Connects once and runs a no-op, to report a bad configuration at
    /// write time rather than at the first credential request.
    pub(crate) async fn verify(&self) -> Result<(), DbError> {
        match self {
            Db::Postgres(p) => {
                let c = p.get().await.map_err(pool_err)?;
                c.batch_execute("SELECT 1").await.map_err(pg_err)
            }
            Db::MySql(p) => my_conn(p)
                .await?
                .query_drop("SELECT 1")
                .await
                .map_err(my_err),
            Db::Redis(r) => {
                let mut c = r.conn().await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .map(|_| ())
                    .map_err(|e| r.fail(e))
            }
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close(),
            Db::MySql(p) => {
                let _ = p.clone().disconnect().await;
            }
            Db::Redis(r) => {
                r.conn.lock().await.take();
            }
        }
    }

    /// Creates a dynamic user. PostgreSQL runs the statements in one
    /// transaction; MySQL commits each DDL statement on its own, so on a
    /// failure there the `rollback` statements run (best effort).
    pub(crate) async fn create_user(
        &self,
        creation: &[String],
        rollback: &[String],
        username: &str,
        password: &str,
        expiration: &str,
    ) -> Result<(), DbError> {
        let vars = user_vars(username, Some(password), Some(expiration));
        let res = match self {
            Db::Postgres(p) => pg_exec(p, creation, &vars).await,
            Db::MySql(p) => {
                let r = my_exec(p, creation, &vars).await;
                if r.is_err() && !rollback.is_empty() {
                    if let Err(e) = my_exec(p, rollback, &vars).await {
                        tracing::warn!(error = %e.scrub(&[password]), "database: rollback statements failed");
                    }
                }
                r
            }
            Db::Redis(r) => {
                let mut cmd = redis::cmd("ACL");
                cmd.arg("SETUSER")
                    .arg(username)
                    .arg("on")
                    .arg(format!(">{password}"));
                let rules = redis_rules(creation)?;
                if rules.is_empty() {
                    cmd.arg("~*").arg("+@read");
                }
                for rule in rules {
                    cmd.arg(rule);
                }
                r.run(&cmd).await
            }
        };
        res.map_err(|e| e.scrub(&[password]))
    }

    /// Extends a dynamic user's validity. Only PostgreSQL has an expiry on
    /// its users; elsewhere only custom statements run.
    pub(crate) async fn renew_user(
        &self,
        renew: &[String],
        username: &str,
        expiration: &str,
    ) -> Result<(), DbError> {
        let vars = user_vars(username, None, Some(expiration));
        match self {
            Db::Postgres(p) if renew.is_empty() => {
                pg_exec(
                    p,
                    &["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';".to_string()],
                    &vars,
                )
                .await
            }
            Db::Postgres(p) => pg_exec(p, renew, &vars).await,
            Db::MySql(p) if !renew.is_empty() => my_exec(p, renew, &vars).await,
            _ => Ok(()),
        }
    }

    /// Removes a dynamic user. A user that no longer exists counts as
    /// revoked, so a retried revocation succeeds.
    pub(crate) async fn revoke_user(
        &self,
        revocation: &[String],
        username: &str,
    ) -> Result<(), DbError> {
        let vars = user_vars(username, None, None);
        match self {
            Db::Postgres(p) => {
                let mut c = p.get().await.map_err(pool_err)?;
                let exists = c
                    .query_opt(
                        "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                        &[&username],
                    )
                    .await
                    .map_err(pg_err)?
                    .is_some();
                if !exists {
                    return Ok(());
                }
                if !revocation.is_empty() {
                    return pg_exec_on(&mut c, revocation, &vars).await;
                }
                pg_default_revoke(&mut c, username).await
            }
            Db::MySql(p) => {
                let mut c = my_conn(p).await?;
                // Reading mysql.user needs a privilege the admin may lack;
                // then fall back to the usual '%' host.
                let hosts: Vec<String> = match c
                    .exec::<String, _, _>("SELECT Host FROM mysql.user WHERE User = ?", (username,))
                    .await
                {
                    Ok(h) => {
                        if h.is_empty() {
                            return Ok(());
                        }
                        h
                    }
                    Err(_) => vec!["%".to_string()],
                };
                if !revocation.is_empty() {
                    return my_exec_on(&mut c, revocation, &vars).await;
                }
                for h in hosts {
                    let q = format!(
                        "DROP USER IF EXISTS {}@{}",
                        quote_literal(username, Dialect::MySql),
                        quote_literal(&h, Dialect::MySql)
                    );
                    c.query_drop(q).await.map_err(my_err)?;
                }
                Ok(())
            }
            Db::Redis(r) => {
                let mut cmd = redis::cmd("ACL");
                cmd.arg("DELUSER").arg(username);
                r.run(&cmd).await
            }
        }
    }

    /// Sets the password of an existing user (static roles).
    pub(crate) async fn set_password(
        &self,
        rotation: &[String],
        username: &str,
        password: &str,
    ) -> Result<(), DbError> {
        let vars = user_vars(username, Some(password), None);
        let res = match self {
            Db::Postgres(p) if rotation.is_empty() => {
                pg_exec(
                    p,
                    &["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}';".to_string()],
                    &vars,
                )
                .await
            }
            Db::Postgres(p) => pg_exec(p, rotation, &vars).await,
            Db::MySql(p) if rotation.is_empty() => {
                let mut c = my_conn(p).await?;
                let hosts: Vec<String> = c
                    .exec("SELECT Host FROM mysql.user WHERE User = ?", (username,))
                    .await
                    .unwrap_or_else(|_| vec!["%".to_string()]);
                if hosts.is_empty() {
                    return Err(DbError(format!("user {username:?} does not exist")));
                }
                for h in hosts {
                    let q = format!(
                        "ALTER USER {}@{} IDENTIFIED BY {}",
                        quote_literal(username, Dialect::MySql),
                        quote_literal(&h, Dialect::MySql),
                        quote_literal(password, Dialect::MySql)
                    );
                    c.query_drop(q).await.map_err(my_err)?;
                }
                Ok(())
            }
            Db::MySql(p) => my_exec(p, rotation, &vars).await,
            Db::Redis(r) => {
                // `ACL SETUSER` creates a user it does not know, so a
                // static role naming no user would add one: look the user
                // up first, as Vault's redis plugin does.
                let mut get = redis::cmd("ACL");
                get.arg("GETUSER").arg(username);
                if r.query(&get).await? == redis::Value::Nil {
                    return Err(DbError(format!("user {username:?} does not exist")));
                }
                let mut cmd = redis::cmd("ACL");
                cmd.arg("SETUSER")
                    .arg(username)
                    .arg("resetpass")
                    .arg(format!(">{password}"));
                r.run(&cmd).await
            }
        };
        res.map_err(|e| e.scrub(&[password]))
    }

    /// Changes the password of the account this pool logs in as.
    pub(crate) async fn rotate_root(
        &self,
        statements: &[String],
        username: &str,
        password: &str,
    ) -> Result<(), DbError> {
        let vars = user_vars(username, Some(password), None);
        let res = match self {
            Db::Postgres(p) if statements.is_empty() => {
                let q = format!(
                    "ALTER ROLE CURRENT_USER WITH PASSWORD {}",
                    quote_literal(password, Dialect::Postgres)
                );
                let c = p.get().await.map_err(pool_err)?;
                c.batch_execute(&q).await.map_err(pg_err)
            }
            Db::Postgres(p) => pg_exec(p, statements, &vars).await,
            // MariaDB accepts `ALTER USER CURRENT_USER()` and changes
            // nothing: name the account.
            Db::MySql(p) if statements.is_empty() => {
                let mut c = my_conn(p).await?;
                let me: Option<String> = c
                    .query_first("SELECT CURRENT_USER()")
                    .await
                    .map_err(my_err)?;
                let me = me.ok_or_else(|| DbError("CURRENT_USER() returned nothing".into()))?;
                let (user, host) = me.rsplit_once('@').unwrap_or((me.as_str(), "%"));
                let q = format!(
                    "ALTER USER {}@{} IDENTIFIED BY {}",
                    quote_literal(user, Dialect::MySql),
                    quote_literal(host, Dialect::MySql),
                    quote_literal(password, Dialect::MySql)
                );
                c.query_drop(q).await.map_err(my_err)
            }
            Db::MySql(p) => my_exec(p, statements, &vars).await,
            Db::Redis(r) => {
                let mut cmd = redis::cmd("ACL");
                cmd.arg("SETUSER")
                    .arg(&r.username)
                    .arg("resetpass")
                    .arg(format!(">{password}"));
                r.run(&cmd).await
            }
        };
        res.map_err(|e| e.scrub(&[password]))
    }
}

fn user_vars<'a>(
    username: &'a str,
    password: Option<&'a str>,
    expiration: Option<&'a str>,
) -> Vec<Var<'a>> {
    let mut v = vec![
        ("name", Kind::Identifier, username),
        ("username", Kind::Identifier, username),
    ];
    if let Some(p) = password {
        v.push(("password", Kind::Literal, p));
    }
    if let Some(e) = expiration {
        v.push(("expiration", Kind::Literal, e));
    }
    v
}

/// Every statement of every entry, rendered, in order.
fn render_all(
    statements: &[String],
    dialect: Dialect,
    vars: &[Var<'_>],
) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for stmt in statements {
        for q in split_statements(stmt, dialect) {
            out.push(render_sql(&q, dialect, vars)?);
        }
    }
    Ok(out)
}

async fn pg_exec(pool: &PgPool, statements: &[String], vars: &[Var<'_>]) -> Result<(), DbError> {
    let mut c = pool.get().await.map_err(pool_err)?;
    pg_exec_on(&mut c, statements, vars).await
}

async fn pg_exec_on(
    c: &mut deadpool_postgres::Object,
    statements: &[String],
    vars: &[Var<'_>],
) -> Result<(), DbError> {
    let queries = render_all(statements, Dialect::Postgres, vars)?;
    let tx = c.transaction().await.map_err(pg_err)?;
    for q in &queries {
        tx.batch_execute(q).await.map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}

/// Take back every privilege the user holds on relations, schemas and this
/// database (found in the catalogs, one object at a time: a blanket
/// `REVOKE ... ON ALL TABLES IN SCHEMA` fails outright when the schema has
/// a table the admin has no rights on), then drop the role. The revokes
/// are best effort; the drop is not, and says what still depends on it.
async fn pg_default_revoke(
    c: &mut deadpool_postgres::Object,
    username: &str,
) -> Result<(), DbError> {
    let d = Dialect::Postgres;
    let name = quote_ident(username, d);
    let mut stmts = Vec::new();
    let rels = c
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text, c.relkind = 'S' \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL aclexplode(c.relacl) a \
             JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
             WHERE r.rolname = $1",
            &[&username],
        )
        .await
        .map_err(pg_err)?;
    for row in rels {
        let (Ok(schema), Ok(rel), Ok(seq)) = (
            row.try_get::<_, String>(0),
            row.try_get::<_, String>(1),
            row.try_get::<_, bool>(2),
        ) else {
            continue;
        };
        stmts.push(format!(
            "REVOKE ALL PRIVILEGES ON {} {}.{} FROM {name}",
            if seq { "SEQUENCE" } else { "TABLE" },
            quote_ident(&schema, d),
            quote_ident(&rel, d)
        ));
    }
    let schemas = c
        .query(
            "SELECT DISTINCT n.nspname::text FROM pg_catalog.pg_namespace n \
             CROSS JOIN LATERAL aclexplode(n.nspacl) a \
             JOIN pg_catalog.pg_roles r ON r.oid = a.grantee WHERE r.rolname = $1",
            &[&username],
        )
        .await
        .map_err(pg_err)?;
    for row in schemas {
        if let Ok(schema) = row.try_get::<_, String>(0) {
            stmts.push(format!(
                "REVOKE ALL PRIVILEGES ON SCHEMA {} FROM {name}",
                quote_ident(&schema, d)
            ));
        }
    }
    let db: Option<String> = c
        .query_opt("SELECT current_database()::text", &[])
        .await
        .map_err(pg_err)?
        .and_then(|r| r.try_get(0).ok());
    if let Some(db) = db {
        stmts.push(format!(
            "REVOKE ALL PRIVILEGES ON DATABASE {} FROM {name}",
            quote_ident(&db, d)
        ));
    }
    for q in &stmts {
        if let Err(e) = c.batch_execute(q).await {
            tracing::debug!(error = %pg_err(e), "database: revoke before drop failed");
        }
    }
    c.batch_execute(&format!("DROP ROLE IF EXISTS {name}"))
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => DbError(format!(
                "{}: {}{}",
                db.severity(),
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            )),
            None => pg_err(e),
        })
}

async fn my_conn(p: &mysql_async::Pool) -> Result<mysql_async::Conn, DbError> {
    tokio::time::timeout(CONNECT_TIMEOUT, p.get_conn())
        .await
        .map_err(|_| DbError("timed out connecting to the database".into()))?
        .map_err(my_err)
}

async fn my_exec(
    p: &mysql_async::Pool,
    statements: &[String],
    vars: &[Var<'_>],
) -> Result<(), DbError> {
    let mut c = my_conn(p).await?;
    my_exec_on(&mut c, statements, vars).await
}

async fn my_exec_on(
    c: &mut mysql_async::Conn,
    statements: &[String],
    vars: &[Var<'_>],
) -> Result<(), DbError> {
    for q in render_all(statements, Dialect::MySql, vars)? {
        c.query_drop(q).await.map_err(my_err)?;
    }
    Ok(())
}

/// Redis statements are ACL rules: each entry a JSON array of rules (what
/// Vault's redis plugin takes) or rules separated by spaces.
fn redis_rules(statements: &[String]) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for s in statements {
        let t = s.trim();
        if t.starts_with('[') {
            let rules: Vec<String> = serde_json::from_str(t).map_err(|_| {
                DbError("creation_statements: expected a JSON array of ACL rules".into())
            })?;
            out.extend(rules);
        } else {
            out.extend(t.split_whitespace().map(str::to_string));
        }
    }
    Ok(out)
}

impl RedisDb {
    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, DbError> {
        let mut guard = self.conn.lock().await;
        if let Some((c, opened)) = guard.as_ref() {
            if self.max_lifetime.is_zero() || opened.elapsed() < self.max_lifetime {
                return Ok(c.clone());
            }
        }
        let c = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| DbError("timed out connecting to redis".into()))?
        .map_err(redis_err)?;
        *guard = Some((c.clone(), std::time::Instant::now()));
        Ok(c)
    }

    /// An error on a connection may mean it is dead: the next call
    /// reconnects.
    fn fail(&self, e: redis::RedisError) -> DbError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            if let Ok(mut g) = self.conn.try_lock() {
                g.take();
            }
        }
        redis_err(e)
    }

    async fn run(&self, cmd: &redis::Cmd) -> Result<(), DbError> {
        self.query(cmd).await.map(|_| ())
    }

    async fn query(&self, cmd: &redis::Cmd) -> Result<redis::Value, DbError> {
        let mut c = self.conn().await?;
        cmd.query_async::<redis::Value>(&mut c)
            .await
            .map_err(|e| self.fail(e))
    }
}

/// The connection URL as shown on a config read: placeholders stay, any
/// literal password is masked.
pub(crate) fn redact_url(url: &str) -> String {
    let mask = |pw: &str| pw.is_empty() || pw.contains("{{password}}");
    // key=value form: password=...
    if !url.contains("://") && !url.contains("@tcp(") && url.contains("password=") {
        return url
            .split(' ')
            .map(|kv| match kv.split_once('=') {
                Some(("password", v)) if !mask(v) => "password=*****".to_string(),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let (prefix, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let (creds, tail) = rest.split_at(at);
    match creds.split_once(':') {
        Some((u, p)) if !mask(p) => format!("{prefix}{u}:*****{tail}"),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn settings(url: &str) -> Settings<'_> {
        Settings {
            kind: PluginKind::Postgres,
            connection_url: url,
            username: "adm@in",
            password: "p@ss:w/rd?#",
            host: "",
            port: 0,
            tls: false,
            max_open_connections: 4,
            max_connection_lifetime: Duration::ZERO,
        }
    }

    #[test]
    fn postgres_credentials_are_set_after_parsing() {
        for url in [
            "postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
            "host=127.0.0.1 port=5432 user={{username}} password={{password}} dbname=postgres",
        ] {
            let c = pg_config(&settings(url)).unwrap();
            assert_eq!(c.get_user(), Some("adm@in"));
            assert_eq!(c.get_password(), Some(&b"p@ss:w/rd?#"[..]));
        }
        let c = pg_config(&settings("postgres://127.0.0.1/db")).unwrap();
        assert_eq!(c.get_user(), Some("adm@in"));
    }

    #[test]
    fn mysql_dsn_forms() {
        for url in [
            "{{username}}:{{password}}@tcp(127.0.0.1:3307)/app",
            "mysql://{{username}}:{{password}}@127.0.0.1:3307/app",
        ] {
            let o: mysql_async::Opts = mysql_opts(&settings(url)).unwrap().into();
            assert_eq!(o.user(), Some("adm@in"));
            assert_eq!(o.pass(), Some("p@ss:w/rd?#"));
            assert_eq!(o.ip_or_hostname(), "127.0.0.1");
            assert_eq!(o.tcp_port(), 3307);
            assert_eq!(o.db_name(), Some("app"));
        }
        assert!(mysql_opts(&settings("garbage")).is_err());
        let o: mysql_async::Opts = mysql_opts(&settings("{{username}}:{{password}}@tcp(h:1)/"))
            .unwrap()
            .into();
        assert_eq!(o.pool_opts().abs_conn_ttl(), None);
        let mut s = settings("{{username}}:{{password}}@tcp(h:1)/");
        s.max_connection_lifetime = Duration::from_secs(30);
        let o: mysql_async::Opts = mysql_opts(&s).unwrap().into();
        assert_eq!(
            o.pool_opts().abs_conn_ttl(),
            Some(Duration::from_secs(30)),
            "max_connection_lifetime reaches the pool"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgresql://{{username}}:{{password}}@h/db"),
            "postgresql://{{username}}:{{password}}@h/db"
        );
        assert_eq!(
            redact_url("postgresql://u:secret@h/db"),
            "postgresql://u:*****@h/db"
        );
        assert_eq!(redact_url("u:secret@tcp(h:1)/"), "u:*****@tcp(h:1)/");
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=***** user=u"
        );
    }
}
