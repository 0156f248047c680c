//! The database engine against real servers: PostgreSQL (127.0.0.1:5432,
//! trust auth as `postgres`), MariaDB (127.0.0.1:3306, `root` without a
//! password) and Redis (127.0.0.1:6379). Each test works with its own
//! admin user and objects, named with a random suffix, and drops them.
//! A test whose server is not reachable says so and passes.
//!
//! PostgreSQL here trusts every local connection, so a login alone proves
//! nothing about a password: the tests check passwords against the SCRAM
//! verifier PostgreSQL stores (`pg_authid`), as the server would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use tresor_engines::secrets::database::Database;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{
    Backend, BackendError, Operation, Response, Secret, Storage, StorageError, StorageExt,
    SystemView,
};

/// Passwords with the characters that break naive quoting.
struct Sys;

#[async_trait]
impl SystemView for Sys {
    fn default_lease_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }
    fn max_lease_ttl(&self) -> Duration {
        Duration::from_secs(86400)
    }
    async fn generate_password(&self, _name: Option<&str>) -> Result<String, BackendError> {
        Ok(format!("{}-'\\\";x", rand_str(20)))
    }
}

fn rand_str(n: usize) -> String {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| (b'a' + x % 26) as char).collect()
}

struct Env {
    b: Database,
    s: MemoryStorage,
}

impl Env {
    fn new() -> Self {
        Env {
            b: Database::new(Arc::new(Sys)),
            s: MemoryStorage::new(),
        }
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Option<Response>, BackendError> {
        self.b.handle(&req(op, path).body(body), &self.s).await
    }

    async fn write(&self, path: &str, body: Value) -> Result<Option<Response>, BackendError> {
        self.call(Operation::Update, path, body).await
    }

    async fn read(&self, path: &str) -> Option<Value> {
        self.call(Operation::Read, path, json!({}))
            .await
            .unwrap()
            .and_then(|r| r.data)
            .map(Value::Object)
    }

    async fn creds_as(
        &self,
        role: &str,
        display: &str,
    ) -> Result<(String, String, Secret), BackendError> {
        let mut r = req(Operation::Read, &format!("creds/{role}"));
        r.display_name = display.into();
        let resp = self.b.handle(&r, &self.s).await?.expect("creds");
        let d = resp.data.unwrap();
        let mut secret = resp.secret.expect("lease");
        secret.lease.issue_time = chrono::Utc::now().timestamp();
        Ok((
            d["username"].as_str().unwrap().to_string(),
            d["password"].as_str().unwrap().to_string(),
            secret,
        ))
    }

    async fn creds(&self, role: &str) -> (String, String, Secret) {
        self.creds_as(role, "token").await.unwrap()
    }

    async fn lease_op(
        &self,
        op: Operation,
        role: &str,
        secret: &Secret,
    ) -> Result<Option<Response>, BackendError> {
        let mut r = req(op, &format!("creds/{role}"));
        r.secret = Some(secret.clone());
        self.b.handle(&r, &self.s).await
    }
}

fn text(r: &Option<Response>) -> String {
    serde_json::to_string(&r.as_ref().and_then(|r| r.data.clone())).unwrap()
}

// --- PostgreSQL helpers ---------------------------------------------------------

const PG: &str = "host=127.0.0.1 port=5432 dbname=postgres";

async fn pg_connect(
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = PG.parse().unwrap();
    cfg.user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(5));
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn pg_super() -> Option<tokio_postgres::Client> {
    match pg_connect("postgres", "").await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("PostgreSQL not reachable on 127.0.0.1:5432 ({e}); skipping");
            None
        }
    }
}

async fn pg_role_exists(c: &tokio_postgres::Client, name: &str) -> bool {
    c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Does `password` match the role's stored SCRAM-SHA-256 verifier?
async fn scram_matches(c: &tokio_postgres::Client, name: &str, password: &str) -> bool {
    let row = c
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap();
    let stored: Option<String> = row.get(0);
    let stored = stored.expect("role has a password");
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let rest = stored
        .strip_prefix("SCRAM-SHA-256$")
        .expect("scram verifier");
    let (params, keys) = rest.split_once('$').unwrap();
    let (iters, salt) = params.split_once(':').unwrap();
    let (stored_key, _) = keys.split_once(':').unwrap();
    let mut salted = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iters.parse().unwrap()).unwrap(),
        &B64.decode(salt).unwrap(),
        password.as_bytes(),
        &mut salted,
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &salted);
    let client_key = aws_lc_rs::hmac::sign(&key, b"Client Key");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client_key.as_ref());
    digest.as_ref() == B64.decode(stored_key).unwrap().as_slice()
}

/// A PostgreSQL admin for one test: can create roles and owns a table the
/// dynamic users get SELECT on.
struct PgFixture {
    sup: tokio_postgres::Client,
    sfx: String,
    admin: String,
    admin_pw: String,
    table: String,
}

impl PgFixture {
    async fn new() -> Option<Self> {
        let sup = pg_super().await?;
        let sfx = rand_str(8);
        let admin = format!("tresor_admin_{sfx}");
        let admin_pw = format!("adm-{}", rand_str(12));
        let table = format!("tresor_t_{sfx}");
        sup.batch_execute(&format!(
            "CREATE ROLE {admin} WITH LOGIN CREATEROLE PASSWORD '{admin_pw}';
             CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1);
             ALTER TABLE {table} OWNER TO {admin};"
        ))
        .await
        .unwrap();
        Some(PgFixture {
            sup,
            sfx,
            admin,
            admin_pw,
            table,
        })
    }

    fn config(&self) -> Value {
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
            "username": self.admin,
            "password": self.admin_pw,
            "allowed_roles": "*",
        })
    }

    fn creation(&self) -> String {
        format!(
            "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}';
             GRANT SELECT ON {} TO \"{{{{name}}}}\";",
            self.table
        )
    }

    async fn valid_until(&self, name: &str) -> i64 {
        let row = self
            .sup
            .query_one(
                "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
                &[&name],
            )
            .await
            .unwrap();
        row.get(0)
    }

    async fn drop_all(&self) {
        // Leftover dynamic users (a failed assertion) go too.
        let rows = self
            .sup
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
                &[&format!("%{}%", self.sfx)],
            )
            .await
            .unwrap();
        self.sup
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await
            .unwrap();
        for r in rows {
            let n: String = r.get(0);
            if n != self.admin {
                let _ = self
                    .sup
                    .batch_execute(&format!(
                        "DROP ROLE IF EXISTS \"{}\"",
                        n.replace('"', "\"\"")
                    ))
                    .await;
            }
        }
        self.sup
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", self.admin))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn postgres_dynamic_users_login_renew_revoke() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let env = Env::new();
    env.write("config/pg", f.config()).await.unwrap();
    env.write(
        "roles/app",
        json!({"db_name": "pg", "creation_statements": f.creation(), "default_ttl": "1h", "max_ttl": "24h"}),
    )
    .await
    .unwrap();

    // Configuration reads never carry the password.
    let conf = env
        .call(Operation::Read, "config/pg", json!({}))
        .await
        .unwrap();
    let t = text(&conf);
    assert!(!t.contains(&f.admin_pw), "{t}");
    assert!(t.contains("{{password}}"), "{t}");
    let conf = conf.unwrap().data.unwrap();
    assert_eq!(conf["plugin_name"], "postgresql-database-plugin");
    assert_eq!(conf["connection_details"]["username"], f.admin.as_str());
    assert_eq!(conf["allowed_roles"], json!(["*"]));
    let list = env
        .call(Operation::List, "config", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.data.unwrap()["keys"], json!(["pg"]));
    let role = env.read("roles/app").await.unwrap();
    assert_eq!(role["default_ttl"], 3600);
    assert_eq!(role["max_ttl"], 86400);
    assert_eq!(role["db_name"], "pg");

    let (user, pw, secret) = env.creds("app").await;
    assert!(user.starts_with("v-token-app-"), "{user}");
    assert!(user.len() <= 63);
    assert_eq!(secret.lease.ttl, Duration::from_secs(3600));
    assert!(secret.lease.renewable);

    // The user logs in, reads its table, and has exactly this password.
    let c = pg_connect(&user, &pw).await.expect("dynamic user logs in");
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {}", f.table), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(c);
    assert!(scram_matches(&f.sup, &user, &pw).await);
    assert!(!scram_matches(&f.sup, &user, "wrong").await);
    let until = f.valid_until(&user).await;
    let now = chrono::Utc::now().timestamp();
    assert!(
        (until - (now + 3600)).abs() < 60,
        "valid until {until}, now {now}"
    );

    // Renewal moves VALID UNTIL.
    let mut s = secret.clone();
    s.lease.increment = Duration::from_secs(7200);
    let r = env
        .lease_op(Operation::Renew, "app", &s)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.secret.unwrap().lease.ttl, Duration::from_secs(7200));
    let until = f.valid_until(&user).await;
    assert!((until - (now + 7200)).abs() < 60, "valid until {until}");

    // Revocation drops the user; a second revocation is a no-op.
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();
    assert!(!pg_role_exists(&f.sup, &user).await);
    assert!(
        pg_connect(&user, &pw).await.is_err(),
        "revoked user still logs in"
    );
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();

    // A role not in allowed_roles is refused.
    let mut cfg = f.config();
    cfg["allowed_roles"] = json!(["other"]);
    env.write("config/pg", cfg).await.unwrap();
    let e = env.creds_as("app", "token").await.unwrap_err();
    assert!(e.to_string().contains("allowed"), "{e}");

    env.call(Operation::Delete, "config/pg", json!({}))
        .await
        .unwrap();
    assert!(env.read("config/pg").await.is_none());
    f.drop_all().await;
}

#[tokio::test]
async fn postgres_root_rotation_keeps_engine_working() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let env = Env::new();
    env.write("config/pg", f.config()).await.unwrap();
    env.write(
        "roles/app",
        json!({"db_name": "pg", "creation_statements": f.creation()}),
    )
    .await
    .unwrap();
    assert!(scram_matches(&f.sup, &f.admin, &f.admin_pw).await);

    env.write("rotate-root/pg", json!({})).await.unwrap();
    assert!(
        !scram_matches(&f.sup, &f.admin, &f.admin_pw).await,
        "the old root password still matches"
    );
    assert!(!text(
        &env.call(Operation::Read, "config/pg", json!({}))
            .await
            .unwrap()
    )
    .contains("adm-"));

    // The engine keeps working with the password only it knows, also after
    // its pool is rebuilt.
    let (user, pw, secret) = env.creds("app").await;
    assert!(scram_matches(&f.sup, &user, &pw).await);
    env.write("reset/pg", json!({})).await.unwrap();
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();
    assert!(!pg_role_exists(&f.sup, &user).await);
    f.drop_all().await;
}

#[tokio::test]
async fn postgres_static_roles_rotate_and_survive_restart() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let static_user = format!("tresor_static_{}", f.sfx);
    f.sup
        .batch_execute(&format!(
            "CREATE ROLE {static_user} LOGIN PASSWORD 'initial'"
        ))
        .await
        .unwrap();
    // CREATEROLE may only change passwords of roles it administers (PG 16+).
    let _ = f
        .sup
        .batch_execute(&format!(
            "GRANT {static_user} TO {} WITH ADMIN OPTION",
            f.admin
        ))
        .await;
    let env = Env::new();
    env.write("config/pg", f.config()).await.unwrap();

    let e = env
        .write(
            "static-roles/s",
            json!({"db_name": "pg", "username": static_user, "rotation_period": "2s"}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("rotation_period"), "{e}");
    let e = env
        .write(
            "static-roles/s",
            json!({"db_name": "pg", "username": static_user, "rotation_schedule": "61 * * * *"}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("rotation_schedule"), "{e}");

    // Creation rotates at once.
    env.write(
        "static-roles/s",
        json!({"db_name": "pg", "username": static_user, "rotation_period": "5s"}),
    )
    .await
    .unwrap();
    assert!(!scram_matches(&f.sup, &static_user, "initial").await);
    let c1 = env.read("static-creds/s").await.unwrap();
    let pw1 = c1["password"].as_str().unwrap().to_string();
    assert!(scram_matches(&f.sup, &static_user, &pw1).await);
    assert_eq!(c1["username"], static_user.as_str());
    assert_eq!(c1["rotation_period"], 5);
    assert!(c1["ttl"].as_i64().unwrap() <= 5);
    assert!(c1["last_vault_rotation"].as_str().unwrap().contains('T'));
    let role = env.read("static-roles/s").await.unwrap();
    assert!(role.get("password").is_none());
    let list = env
        .call(Operation::List, "static-roles", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.data.unwrap()["keys"], json!(["s"]));

    // Manual rotation.
    env.write("rotate-role/s", json!({})).await.unwrap();
    let pw2 = env.read("static-creds/s").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(pw1, pw2);
    assert!(scram_matches(&f.sup, &static_user, &pw2).await);
    assert!(!scram_matches(&f.sup, &static_user, &pw1).await);

    // Not due yet: periodic leaves it.
    env.b.periodic(&env.s).await.unwrap();
    assert_eq!(
        env.read("static-creds/s").await.unwrap()["password"],
        pw2.as_str()
    );

    // A new backend on the same storage (a restart) rotates when due.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted = Env {
        b: Database::new(Arc::new(Sys)),
        s: env.s,
    };
    restarted.b.periodic(&restarted.s).await.unwrap();
    let pw3 = restarted.read("static-creds/s").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(pw3, pw2);
    assert!(scram_matches(&f.sup, &static_user, &pw3).await);

    // A cron schedule replaces the period.
    restarted
        .write(
            "static-roles/s",
            json!({"rotation_schedule": "*/5 * * * *"}),
        )
        .await
        .unwrap();
    let c = restarted.read("static-creds/s").await.unwrap();
    assert_eq!(c["rotation_schedule"], "*/5 * * * *");
    assert!(c["ttl"].as_i64().unwrap() <= 300);
    let e = restarted
        .write("static-roles/s", json!({"username": "someone_else"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("username"), "{e}");

    restarted
        .call(Operation::Delete, "static-roles/s", json!({}))
        .await
        .unwrap();
    assert!(restarted.read("static-creds/s").await.is_none());
    f.drop_all().await;
}

#[tokio::test]
async fn postgres_revocation_fails_while_unreachable_then_succeeds() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let env = Env::new();
    env.write("config/pg", f.config()).await.unwrap();
    env.write(
        "roles/app",
        json!({"db_name": "pg", "creation_statements": f.creation()}),
    )
    .await
    .unwrap();
    let (user, _pw, secret) = env.creds("app").await;

    // The admin cannot log in any more: new connections fail.
    f.sup
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", f.admin))
        .await
        .unwrap();
    env.write("reset/pg", json!({})).await.unwrap();
    let e = env
        .lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(&f.admin_pw), "{e}");
    assert!(
        pg_role_exists(&f.sup, &user).await,
        "user dropped despite the error"
    );

    // Back: the retry succeeds.
    f.sup
        .batch_execute(&format!("ALTER ROLE {} LOGIN", f.admin))
        .await
        .unwrap();
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();
    assert!(!pg_role_exists(&f.sup, &user).await);

    // A database that is not there: refused at write with verification,
    // failing at use without, and the error never shows the password.
    let mut cfg = f.config();
    cfg["connection_url"] = json!("postgresql://{{username}}:{{password}}@127.0.0.1:1/postgres");
    let e = env.write("config/down", cfg.clone()).await.unwrap_err();
    assert!(matches!(e, BackendError::BadRequest(_)), "{e:?}");
    assert!(!e.to_string().contains(&f.admin_pw), "{e}");
    cfg["verify_connection"] = json!(false);
    env.write("config/down", cfg).await.unwrap();
    env.write(
        "roles/down",
        json!({"db_name": "down", "creation_statements": f.creation()}),
    )
    .await
    .unwrap();
    let e = env.creds_as("down", "token").await.unwrap_err();
    assert!(!e.to_string().contains(&f.admin_pw), "{e}");
    f.drop_all().await;
}

#[tokio::test]
async fn postgres_hostile_names_do_not_inject() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let env = Env::new();
    let mut cfg = f.config();
    cfg["username_template"] = json!(format!(
        "{{{{.DisplayName | truncate 20}}}}_{{{{.RoleName}}}}_{}_{{{{random 6}}}}",
        f.sfx
    ));
    env.write("config/pg", cfg.clone()).await.unwrap();
    let pwned = format!("pwned_{}", f.sfx);
    env.write(
        "roles/a.b@c-d",
        json!({"db_name": "pg", "creation_statements": f.creation()}),
    )
    .await
    .unwrap();
    let hostile = [
        format!("x\"; CREATE ROLE {pwned}; --"),
        format!("x'; CREATE ROLE {pwned}; --"),
        format!("x`$$; CREATE ROLE {pwned}; \\"),
    ];
    for display in &hostile {
        let (user, pw, secret) = env.creds_as("a.b@c-d", display).await.unwrap();
        assert!(
            user.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
            "{user}"
        );
        assert!(scram_matches(&f.sup, &user, &pw).await);
        env.lease_op(Operation::Revoke, "a.b@c-d", &secret)
            .await
            .unwrap();
    }
    // Role names outside the path pattern do not even route.
    let e = env
        .write(
            "roles/x';DROP",
            json!({"db_name": "pg", "creation_statements": f.creation()}),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::UnsupportedPath), "{e:?}");
    // A template that renders quotes is refused.
    cfg["username_template"] = json!("{{.RoleName}}\"';");
    let e = env.write("config/pg2", cfg).await.unwrap_err();
    assert!(e.to_string().contains("username_template"), "{e}");

    // A static role for a user whose name is full of quotes is rotated
    // with the name escaped, not executed.
    let weird = format!("we\"ird'; CREATE ROLE {pwned}; -- {}", f.sfx);
    f.sup
        .batch_execute(&format!(
            "CREATE ROLE \"{}\" LOGIN; GRANT \"{}\" TO {} WITH ADMIN OPTION",
            weird.replace('"', "\"\""),
            weird.replace('"', "\"\""),
            f.admin
        ))
        .await
        .unwrap();
    env.write(
        "static-roles/weird",
        json!({"db_name": "pg", "username": weird, "rotation_period": "1h"}),
    )
    .await
    .unwrap();
    let pw = env.read("static-creds/weird").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(scram_matches(&f.sup, &weird, &pw).await);

    assert!(!pg_role_exists(&f.sup, &pwned).await, "SQL was injected");
    let n: i64 = f
        .sup
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 AND rolname <> $2",
            &[&format!("%{pwned}%"), &weird],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    f.drop_all().await;
}

// --- MariaDB ---------------------------------------------------------------------

fn my_opts(user: &str, pw: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some(user))
        .pass((!pw.is_empty()).then_some(pw))
        .prefer_socket(false)
        .into()
}

async fn my_login(user: &str, pw: &str) -> Result<mysql_async::Conn, mysql_async::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        mysql_async::Conn::new(my_opts(user, pw)),
    )
    .await
    .expect("mysql connect timed out")
}

async fn my_user_count(c: &mut mysql_async::Conn, pattern: &str) -> i64 {
    c.exec_first::<i64, _, _>(
        "SELECT count(*) FROM mysql.user WHERE User LIKE ?",
        (pattern,),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn mysql_dynamic_static_and_root_rotation() {
    let mut sup = match my_login("root", "").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("MariaDB not reachable on 127.0.0.1:3306 ({e}); skipping");
            return;
        }
    };
    let sfx = rand_str(6);
    let admin = format!("tadm_{sfx}");
    let admin_pw = format!("adm-{}", rand_str(12));
    let dbname = format!("tresordb_{sfx}");
    let static_user = format!("tstat_{sfx}");
    let pwned = format!("pwned_{sfx}");
    sup.query_drop(format!(
        "CREATE USER '{admin}'@'%' IDENTIFIED BY '{admin_pw}'"
    ))
    .await
    .unwrap();
    sup.query_drop(format!(
        "GRANT ALL PRIVILEGES ON *.* TO '{admin}'@'%' WITH GRANT OPTION"
    ))
    .await
    .unwrap();
    sup.query_drop(format!("CREATE DATABASE {dbname}"))
        .await
        .unwrap();
    sup.query_drop(format!(
        "CREATE USER '{static_user}'@'%' IDENTIFIED BY 'initial'"
    ))
    .await
    .unwrap();

    let env = Env::new();
    env.write(
        "config/my",
        json!({
            "plugin_name": "mysql-database-plugin",
            "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
            "username": admin,
            "password": admin_pw,
            "allowed_roles": ["app", "s"],
        }),
    )
    .await
    .unwrap();
    env.write(
        "roles/app",
        json!({
            "db_name": "my",
            "creation_statements": [
                format!("CREATE USER '{{{{name}}}}'@'%' IDENTIFIED BY '{{{{password}}}}'; GRANT SELECT ON {dbname}.* TO '{{{{name}}}}'@'%';")
            ],
            "default_ttl": 600,
        }),
    )
    .await
    .unwrap();

    let (user, pw, secret) = env
        .creds_as("app", &format!("x'; CREATE USER '{pwned}'@'%'; -- `"))
        .await
        .unwrap();
    assert!(user.len() <= 32, "{user}");
    let mut c = my_login(&user, &pw).await.expect("dynamic user logs in");
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    let _ = c.disconnect().await;
    assert!(my_login(&user, "wrong").await.is_err());
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();
    assert!(
        my_login(&user, &pw).await.is_err(),
        "revoked user still logs in"
    );
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();

    // Static role: the old password stops working, the new one works.
    env.write(
        "static-roles/s",
        json!({"db_name": "my", "username": static_user, "rotation_period": "1h"}),
    )
    .await
    .unwrap();
    assert!(my_login(&static_user, "initial").await.is_err());
    let pw1 = env.read("static-creds/s").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    my_login(&static_user, &pw1)
        .await
        .expect("rotated password works");
    env.write("rotate-role/s", json!({})).await.unwrap();
    let pw2 = env.read("static-creds/s").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(my_login(&static_user, &pw1).await.is_err());
    my_login(&static_user, &pw2)
        .await
        .expect("second password works");

    // Root rotation: the old admin password is dead, the engine lives.
    env.write("rotate-root/my", json!({})).await.unwrap();
    assert!(my_login(&admin, &admin_pw).await.is_err());
    let (user, pw, secret) = env.creds("app").await;
    my_login(&user, &pw)
        .await
        .expect("creds after root rotation");
    env.lease_op(Operation::Revoke, "app", &secret)
        .await
        .unwrap();
    assert!(!text(
        &env.call(Operation::Read, "config/my", json!({}))
            .await
            .unwrap()
    )
    .contains("adm-"));

    assert_eq!(
        my_user_count(&mut sup, &format!("%pwned_{sfx}%")).await,
        0,
        "SQL was injected"
    );
    assert_eq!(my_user_count(&mut sup, &format!("v-%{sfx}%")).await, 0);
    for u in [&admin, &static_user] {
        sup.query_drop(format!("DROP USER IF EXISTS '{u}'@'%'"))
            .await
            .unwrap();
    }
    sup.query_drop(format!("DROP DATABASE {dbname}"))
        .await
        .unwrap();
}

// --- Redis -------------------------------------------------------------------------

async fn redis_login(
    user: &str,
    pw: &str,
) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
        "127.0.0.1".into(),
        6379,
    ))?
    .set_redis_settings(
        redis::RedisConnectionInfo::default()
            .set_username(user)
            .set_password(pw),
    );
    redis::Client::open(info)?
        .get_multiplexed_async_connection()
        .await
}

#[tokio::test]
async fn redis_acl_users() {
    let mut sup = match redis::Client::open("redis://127.0.0.1:6379/") {
        Ok(c) => match c.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("Redis not reachable on 127.0.0.1:6379 ({e}); skipping");
                return;
            }
        },
        Err(e) => panic!("{e}"),
    };
    let sfx = rand_str(8);
    let admin = format!("tresor_admin_{sfx}");
    let admin_pw = format!("adm-{}", rand_str(12));
    let static_user = format!("tresor_static_{sfx}");
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            &admin,
            "on",
            &format!(">{admin_pw}"),
            "~*",
            "&*",
            "+@all",
        ])
        .query_async::<()>(&mut sup)
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", &static_user, "on", ">initial", "~*", "+@read"])
        .query_async::<()>(&mut sup)
        .await
        .unwrap();

    let env = Env::new();
    env.write(
        "config/r",
        json!({
            "plugin_name": "redis-database-plugin",
            "host": "127.0.0.1", "port": 6379,
            "username": admin, "password": admin_pw,
            "allowed_roles": "*",
        }),
    )
    .await
    .unwrap();
    let conf = env.read("config/r").await.unwrap();
    assert!(!conf.to_string().contains(&admin_pw));
    assert_eq!(conf["connection_details"]["host"], "127.0.0.1");
    env.write(
        "roles/ro",
        json!({"db_name": "r", "creation_statements": "[\"+@read\", \"~*\"]"}),
    )
    .await
    .unwrap();

    let (user, pw, secret) = env.creds("ro").await;
    let mut c = redis_login(&user, &pw).await.expect("dynamic user logs in");
    let _: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .unwrap();
    let set: Result<(), _> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await;
    assert!(set.is_err(), "read-only user could write");
    assert!(redis_login(&user, "wrong").await.is_err());
    env.lease_op(Operation::Revoke, "ro", &secret)
        .await
        .unwrap();
    assert!(
        redis_login(&user, &pw).await.is_err(),
        "revoked user still logs in"
    );
    env.lease_op(Operation::Revoke, "ro", &secret)
        .await
        .unwrap();

    env.write(
        "static-roles/s",
        json!({"db_name": "r", "username": static_user, "rotation_period": "1h"}),
    )
    .await
    .unwrap();
    assert!(redis_login(&static_user, "initial").await.is_err());
    let pw1 = env.read("static-creds/s").await.unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    redis_login(&static_user, &pw1)
        .await
        .expect("rotated password works");

    env.write("rotate-root/r", json!({})).await.unwrap();
    assert!(redis_login(&admin, &admin_pw).await.is_err());
    let (user, pw, secret) = env.creds("ro").await;
    redis_login(&user, &pw)
        .await
        .expect("creds after root rotation");
    env.lease_op(Operation::Revoke, "ro", &secret)
        .await
        .unwrap();

    redis::cmd("ACL")
        .arg(&["DELUSER", &admin, &static_user])
        .query_async::<()>(&mut sup)
        .await
        .unwrap();
}

// --- Interrupted root rotation -------------------------------------------------

/// Memory storage whose writes to one key fail after `allow` more succeed
/// (`allow` < 0: never), as a storage outage between two writes would.
struct FlakyStorage {
    inner: MemoryStorage,
    key: String,
    allow: std::sync::atomic::AtomicI64,
}

#[async_trait]
impl Storage for FlakyStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        if key == self.key {
            match self.allow.load(Ordering::SeqCst) {
                0 => return Err(StorageError::Backend("injected failure".into())),
                n if n > 0 => {
                    self.allow.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn batch(&self, ops: Vec<tresor_sdk::StorageOp>) -> Result<(), StorageError> {
        self.inner.batch(ops).await
    }
}

/// rotate-root changed the password in PostgreSQL and then stored it; when
/// that store failed the new root password was lost. Now it is stored as
/// pending first, and adopted after a restart.
#[tokio::test]
async fn postgres_root_rotation_survives_a_failed_store() {
    let Some(f) = PgFixture::new().await else {
        return;
    };
    let s = FlakyStorage {
        inner: MemoryStorage::new(),
        key: "config/pg".into(),
        allow: (-1).into(),
    };
    let b = Database::new(Arc::new(Sys));
    b.handle(&req(Operation::Update, "config/pg").body(f.config()), &s)
        .await
        .unwrap();

    // The pending write succeeds, the final one fails.
    s.allow.store(1, std::sync::atomic::Ordering::SeqCst);
    b.handle(&req(Operation::Update, "rotate-root/pg"), &s)
        .await
        .expect_err("the final store fails");
    s.allow.store(-1, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !scram_matches(&f.sup, &f.admin, &f.admin_pw).await,
        "the database has a new root password"
    );
    let stored: Value = s.inner.get_json("config/pg").await.unwrap().unwrap();
    assert_eq!(stored["password"], f.admin_pw.as_str());
    let pending = stored["pending_password"]
        .as_str()
        .expect("new password kept as pending")
        .to_string();
    assert!(scram_matches(&f.sup, &f.admin, &pending).await);

    // After a restart, periodic adopts it.
    let b = Database::new(Arc::new(Sys));
    b.periodic(&s).await.unwrap();
    let stored: Value = s.inner.get_json("config/pg").await.unwrap().unwrap();
    assert_eq!(stored["password"], pending.as_str());
    assert!(stored.get("pending_password").is_none(), "{stored}");

    // And the next rotation starts from the adopted password.
    b.handle(&req(Operation::Update, "rotate-root/pg"), &s)
        .await
        .unwrap();
    let stored: Value = s.inner.get_json("config/pg").await.unwrap().unwrap();
    let now = stored["password"].as_str().unwrap();
    assert_ne!(now, pending);
    assert!(scram_matches(&f.sup, &f.admin, now).await);
    assert!(stored.get("pending_password").is_none(), "{stored}");
    f.drop_all().await;
}

/// A root rotation interrupted with its new password only stored as
/// pending is settled by what the server takes (Redis checks passwords,
/// unlike the trusting PostgreSQL here): adopted when the server has it,
/// dropped when the server still has the old one.
#[tokio::test]
async fn redis_interrupted_root_rotation_is_settled_by_what_the_server_takes() {
    let mut sup = match redis::Client::open("redis://127.0.0.1:6379/") {
        Ok(c) => match c.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("Redis not reachable on 127.0.0.1:6379 ({e}); skipping");
                return;
            }
        },
        Err(e) => panic!("{e}"),
    };
    let admin = format!("tresor_admin_{}", rand_str(8));
    let set_admin_pw = |pw: String| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg(&[
            "SETUSER",
            &admin,
            "on",
            "resetpass",
            &format!(">{pw}"),
            "~*",
            "&*",
            "+@all",
        ]);
        cmd
    };
    let pw0 = format!("adm-{}", rand_str(12));
    set_admin_pw(pw0.clone())
        .query_async::<()>(&mut sup)
        .await
        .unwrap();
    let env = Env::new();
    env.write(
        "config/r",
        json!({
            "plugin_name": "redis-database-plugin", "host": "127.0.0.1", "port": 6379,
            "username": admin, "password": pw0, "allowed_roles": "*",
        }),
    )
    .await
    .unwrap();
    env.write(
        "roles/ro",
        json!({"db_name": "r", "creation_statements": "[\"+@read\", \"~*\"]"}),
    )
    .await
    .unwrap();
    async fn set_pending(s: &MemoryStorage, pending: &str) {
        let mut c: Value = s.get_json("config/r").await.unwrap().unwrap();
        c["pending_password"] = json!(pending);
        s.put_json("config/r", &c).await.unwrap();
    }
    async fn stored(s: &MemoryStorage) -> Value {
        s.get_json("config/r").await.unwrap().unwrap()
    }

    // Stopped after the server took the new password: periodic adopts it.
    let pw1 = format!("adm-{}", rand_str(12));
    set_pending(&env.s, &pw1).await;
    set_admin_pw(pw1.clone())
        .query_async::<()>(&mut sup)
        .await
        .unwrap();
    let env = Env {
        b: Database::new(Arc::new(Sys)),
        s: env.s,
    };
    env.b.periodic(&env.s).await.unwrap();
    let c = stored(&env.s).await;
    assert_eq!(c["password"], pw1.as_str());
    assert!(c.get("pending_password").is_none(), "{c}");

    // Stopped before the server changed: the next use drops the pending
    // password and keeps working with the current one.
    set_pending(&env.s, "never-set").await;
    let env = Env {
        b: Database::new(Arc::new(Sys)),
        s: env.s,
    };
    let (user, pw, secret) = env.creds("ro").await;
    redis_login(&user, &pw).await.expect("creds still work");
    let c = stored(&env.s).await;
    assert_eq!(c["password"], pw1.as_str());
    assert!(c.get("pending_password").is_none(), "{c}");
    env.lease_op(Operation::Revoke, "ro", &secret)
        .await
        .unwrap();

    // A full rotation leaves nothing pending and the server agrees.
    env.write("rotate-root/r", json!({})).await.unwrap();
    let c = stored(&env.s).await;
    assert!(c.get("pending_password").is_none(), "{c}");
    assert!(redis_login(&admin, &pw1).await.is_err());
    redis_login(&admin, c["password"].as_str().unwrap())
        .await
        .expect("stored root password works");

    redis::cmd("ACL")
        .arg(&["DELUSER", &admin])
        .query_async::<()>(&mut sup)
        .await
        .unwrap();
}
