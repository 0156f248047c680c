//! Database leases through the whole server against the real MariaDB
//! (127.0.0.1:3306, `root` without a password), Redis (127.0.0.1:6379) and
//! PostgreSQL (127.0.0.1:5432, trust auth as `postgres`): dynamic users
//! that log in, then cannot after `sys/leases/revoke` or expiry; a
//! revocation the database refuses, kept and retried by the lease manager
//! until it goes through; Redis static-role rotation; hostile static-role
//! user names that must not inject. A test whose server is not reachable
//! says so and passes.
//!
//! Each test works with its own admin user and objects, named with a
//! random suffix, and drops them. Logins are checked with the database's
//! own client library, as the user would log in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::common::{self, call_as, call_root as call, dev};

/// Polls `$cond` every 250 ms until it holds, failing after `$secs`.
macro_rules! eventually {
    ($secs:expr, $what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {}", $what);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }};
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

async fn ok(s: &common::TestServer, verb: &str, path: &str, body: Value) -> Value {
    let (st, b) = call(s, verb, path, Some(body)).await;
    assert!(st == 200 || st == 204, "{verb} {path}: {st} {b}");
    b
}

async fn mount_database(s: &common::TestServer) {
    ok(
        s,
        "POST",
        "sys/mounts/database",
        json!({"type": "database"}),
    )
    .await;
}

/// `(username, password, lease_id, lease_duration)` of a new credential.
async fn creds(s: &common::TestServer, role: &str) -> (String, String, String, i64) {
    let (st, c) = call(s, "GET", &format!("database/creds/{role}"), None).await;
    assert_eq!(st, 200, "{c}");
    (
        c["data"]["username"].as_str().unwrap().to_string(),
        c["data"]["password"].as_str().unwrap().to_string(),
        c["lease_id"].as_str().unwrap().to_string(),
        c["lease_duration"].as_i64().unwrap(),
    )
}

/// The lease as `sys/leases/lookup` shows it, or `None` once it is gone.
async fn lookup(s: &common::TestServer, lease_id: &str) -> Option<Value> {
    let (st, b) = call(
        s,
        "PUT",
        "sys/leases/lookup",
        Some(json!({"lease_id": lease_id})),
    )
    .await;
    match st {
        200 => Some(b["data"].clone()),
        400 => None,
        _ => panic!("lookup: {st} {b}"),
    }
}

async fn revoke(s: &common::TestServer, lease_id: &str) -> (u16, Value) {
    call(
        s,
        "PUT",
        "sys/leases/revoke",
        Some(json!({"lease_id": lease_id})),
    )
    .await
}

async fn static_password(s: &common::TestServer, role: &str) -> String {
    let (st, c) = call(s, "GET", &format!("database/static-creds/{role}"), None).await;
    assert_eq!(st, 200, "{c}");
    c["data"]["password"].as_str().unwrap().to_string()
}

// --- MariaDB -------------------------------------------------------------------

async fn my_login(user: &str, pw: &str) -> Result<mysql_async::Conn, mysql_async::Error> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some(user))
        .pass((!pw.is_empty()).then_some(pw))
        .prefer_socket(false);
    tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
        .await
        .expect("mysql connect timed out")
}

/// Logs in, runs a query, disconnects.
async fn my_can_login(user: &str, pw: &str) -> bool {
    match my_login(user, pw).await {
        Ok(mut c) => {
            let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
            let _ = c.disconnect().await;
            one == Some(1)
        }
        Err(_) => false,
    }
}

async fn my_super() -> Option<mysql_async::Conn> {
    match my_login("root", "").await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("MariaDB not reachable on 127.0.0.1:3306 ({e}); skipping");
            None
        }
    }
}

async fn my_users_named(c: &mut mysql_async::Conn, name: &str) -> i64 {
    c.exec_first::<i64, _, _>("SELECT count(*) FROM mysql.user WHERE User = ?", (name,))
        .await
        .unwrap()
        .unwrap()
}

/// A string literal for the statements the test itself runs as root.
fn my_lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// An admin with every privilege, a database with one table, and the
/// engine mounted with a configuration `my` that logs in as the admin.
struct MyFixture {
    sup: mysql_async::Conn,
    sfx: String,
    admin: String,
    db: String,
}

impl MyFixture {
    async fn new(s: &common::TestServer) -> Option<Self> {
        Self::with_config(s, json!({})).await
    }

    /// `extra` fields go into the connection configuration.
    async fn with_config(s: &common::TestServer, extra: Value) -> Option<Self> {
        let mut sup = my_super().await?;
        let sfx = suffix();
        let admin = format!("tadm_{sfx}");
        let admin_pw = format!("adm-{}", suffix());
        let db = format!("tresordb_{sfx}");
        for q in [
            format!("CREATE USER '{admin}'@'%' IDENTIFIED BY '{admin_pw}'"),
            format!("GRANT ALL PRIVILEGES ON *.* TO '{admin}'@'%' WITH GRANT OPTION"),
            format!("CREATE DATABASE {db}"),
            format!("CREATE TABLE {db}.t (id int)"),
            format!("INSERT INTO {db}.t VALUES (1)"),
        ] {
            sup.query_drop(q).await.unwrap();
        }
        mount_database(s).await;
        let mut config = json!({
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": admin,
                "password": admin_pw,
                "allowed_roles": "*",
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ok(s, "POST", "database/config/my", config).await;
        Some(MyFixture {
            sup,
            sfx,
            admin,
            db,
        })
    }

    async fn dynamic_role(&self, s: &common::TestServer, role: &str, ttl: &str) {
        ok(
            s,
            "POST",
            &format!("database/roles/{role}"),
            json!({
                "db_name": "my",
                "creation_statements": [format!(
                    "CREATE USER '{{{{name}}}}'@'%' IDENTIFIED BY '{{{{password}}}}'; \
                     GRANT SELECT ON {}.* TO '{{{{name}}}}'@'%';",
                    self.db
                )],
                "default_ttl": ttl,
                "max_ttl": "24h",
            }),
        )
        .await;
    }

    async fn table_rows(&mut self) -> i64 {
        self.sup
            .query_first::<i64, _>(format!("SELECT count(*) FROM {}.t", self.db))
            .await
            .unwrap()
            .unwrap()
    }

    /// Drops the admin, the database, and any user whose name carries the
    /// suffix (left over by a failed assertion, or made by the test).
    async fn drop_all(mut self) {
        let users: Vec<(String, String)> = self
            .sup
            .exec(
                "SELECT User, Host FROM mysql.user WHERE User LIKE ?",
                (format!("%{}%", self.sfx),),
            )
            .await
            .unwrap();
        for (u, h) in users {
            let _ = self
                .sup
                .query_drop(format!("DROP USER IF EXISTS {}@{}", my_lit(&u), my_lit(&h)))
                .await;
        }
        let _ = self
            .sup
            .query_drop(format!("DROP USER IF EXISTS '{}'@'%'", self.admin))
            .await;
        let _ = self
            .sup
            .query_drop(format!("DROP DATABASE IF EXISTS {}", self.db))
            .await;
        let _ = self.sup.disconnect().await;
    }
}

#[tokio::test]
async fn mariadb_dynamic_users_stop_working_after_revoke_and_expiry() {
    let s = dev().await;
    let Some(mut f) = MyFixture::new(&s).await else {
        return;
    };
    // Role names may carry the characters the path pattern allows; the
    // user name made from them keeps to [A-Za-z0-9_-].
    f.dynamic_role(&s, "app.b@c-d", "1h").await;
    f.dynamic_role(&s, "short", "2s").await;

    let (user, pw, lease_id, ttl) = creds(&s, "app.b@c-d").await;
    assert_eq!(ttl, 3600);
    assert!(
        lease_id.starts_with("database/creds/app.b@c-d/"),
        "{lease_id}"
    );
    assert!(
        user.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)),
        "{user}"
    );
    assert!(user.len() <= 32, "{user}");
    let mut c = my_login(&user, &pw).await.expect("dynamic user logs in");
    let n: Option<i64> = c
        .query_first(format!("SELECT count(*) FROM {}.t", f.db))
        .await
        .unwrap();
    assert_eq!(n, Some(1), "dynamic user reads its grant");
    let _ = c.disconnect().await;
    assert!(!my_can_login(&user, "wrong").await);
    let l = lookup(&s, &lease_id).await.expect("lease known");
    assert!(l["ttl"].as_i64().unwrap() > 3500, "{l}");

    let (st, b) = revoke(&s, &lease_id).await;
    assert_eq!(st, 204, "{b}");
    assert!(
        !my_can_login(&user, &pw).await,
        "revoked user still logs in"
    );
    assert_eq!(my_users_named(&mut f.sup, &user).await, 0);
    assert!(lookup(&s, &lease_id).await.is_none(), "revoked lease kept");

    // Expiry: the lease manager drops the user on its own.
    let (user, pw, lease_id, ttl) = creds(&s, "short").await;
    assert_eq!(ttl, 2);
    assert!(my_can_login(&user, &pw).await, "short-lived user logs in");
    eventually!(30, "expired MariaDB user to be dropped", {
        !my_can_login(&user, &pw).await
    });
    assert_eq!(my_users_named(&mut f.sup, &user).await, 0);
    eventually!(10, "expired lease to be removed", {
        lookup(&s, &lease_id).await.is_none()
    });
    f.drop_all().await;
}

/// MariaDB refuses the admin's `DROP USER` (its global privileges taken
/// away): the revocation fails, the lease stays with the failure on it,
/// and the lease manager's retry goes through once the privileges are back.
#[tokio::test]
async fn mariadb_refused_revocation_is_retried_until_accepted() {
    let s = dev().await;
    let Some(mut f) = MyFixture::with_config(&s, json!({"max_connection_lifetime": "1m"})).await
    else {
        return;
    };
    let (st, conf) = call(&s, "GET", "database/config/my", None).await;
    assert_eq!(st, 200, "{conf}");
    assert_eq!(
        conf["data"]["connection_details"]["max_connection_lifetime"],
        "60s"
    );
    f.dynamic_role(&s, "app", "1h").await;
    let (user, pw, lease_id, _) = creds(&s, "app").await;
    assert!(my_can_login(&user, &pw).await);

    let admin = f.admin.clone();
    f.sup
        .query_drop(format!(
            "REVOKE CREATE USER, DELETE ON *.* FROM '{admin}'@'%'"
        ))
        .await
        .unwrap();
    let (st, b) = revoke(&s, &lease_id).await;
    assert!(st >= 400, "revocation reported done: {st} {b}");
    assert_eq!(my_users_named(&mut f.sup, &user).await, 1, "dropped anyway");
    assert!(my_can_login(&user, &pw).await);
    let l = lookup(&s, &lease_id).await.expect("failed lease forgotten");
    assert!(l["revoke_attempts"].as_u64().unwrap() >= 1, "{l}");
    assert!(
        l["last_revoke_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{l}"
    );

    f.sup
        .query_drop(format!("GRANT CREATE USER, DELETE ON *.* TO '{admin}'@'%'"))
        .await
        .unwrap();
    eventually!(90, "the retried revocation to go through", {
        lookup(&s, &lease_id).await.is_none()
    });
    assert_eq!(
        my_users_named(&mut f.sup, &user).await,
        0,
        "lease gone, user kept"
    );
    assert!(!my_can_login(&user, &pw).await);
    f.drop_all().await;
}

#[tokio::test]
async fn mariadb_hostile_static_usernames_do_not_inject() {
    let s = dev().await;
    let Some(mut f) = MyFixture::new(&s).await else {
        return;
    };
    let sfx = f.sfx.clone();
    let pwned = format!("pwned_{sfx}");
    let hostile = [
        format!("q'; DROP TABLE {}.t; -- {sfx}", f.db),
        format!("b\\'; CREATE USER {pwned}; #{sfx}"),
        format!("d\"`;CREATE USER '{pwned}'@'%';{sfx}"),
    ];
    for (i, name) in hostile.iter().enumerate() {
        f.sup
            .query_drop(format!(
                "CREATE USER {}@'%' IDENTIFIED BY 'initial'",
                my_lit(name)
            ))
            .await
            .unwrap();
        let role = format!("hostile{i}");
        ok(
            &s,
            "POST",
            &format!("database/static-roles/{role}"),
            json!({"db_name": "my", "username": name, "rotation_period": "1h"}),
        )
        .await;
        let (st, r) = call(&s, "GET", &format!("database/static-roles/{role}"), None).await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["data"]["username"], name.as_str(), "used verbatim");
        assert!(!my_can_login(name, "initial").await, "{name}: not rotated");
        let pw1 = static_password(&s, &role).await;
        assert!(my_can_login(name, &pw1).await, "{name}: new password");
        ok(
            &s,
            "POST",
            &format!("database/rotate-role/{role}"),
            json!({}),
        )
        .await;
        let pw2 = static_password(&s, &role).await;
        assert_ne!(pw1, pw2);
        assert!(!my_can_login(name, &pw1).await, "{name}: old password");
        assert!(my_can_login(name, &pw2).await, "{name}: rotated password");

        // The name put into the administrator's own statements is escaped
        // for the quotes around each placeholder.
        let mut old = pw2;
        for stmt in [
            "ALTER USER '{{name}}'@'%' IDENTIFIED BY '{{password}}';",
            "ALTER USER `{{name}}`@`%` IDENTIFIED BY \"{{password}}\";",
            "SET PASSWORD FOR '{{username}}'@'%' = PASSWORD('{{password}}')",
        ] {
            ok(
                &s,
                "POST",
                &format!("database/static-roles/{role}"),
                json!({"rotation_statements": [stmt]}),
            )
            .await;
            ok(
                &s,
                "POST",
                &format!("database/rotate-role/{role}"),
                json!({}),
            )
            .await;
            let new = static_password(&s, &role).await;
            assert!(
                !my_can_login(name, &old).await,
                "{name}, {stmt}: old password"
            );
            assert!(
                my_can_login(name, &new).await,
                "{name}, {stmt}: new password"
            );
            old = new;
        }
    }

    // A hostile name that is no user: refused, nothing stored, nothing made.
    let ghost = format!("ghost'@'%'; CREATE USER '{pwned}'@'%'; -- {sfx}");
    let (st, b) = call(
        &s,
        "POST",
        "database/static-roles/ghost",
        Some(json!({"db_name": "my", "username": ghost, "rotation_period": "1h"})),
    )
    .await;
    assert!((400..600).contains(&st), "{st} {b}");
    let (st, _) = call(&s, "GET", "database/static-roles/ghost", None).await;
    assert_eq!(st, 404, "a refused static role was stored");

    // Role names outside the path pattern do not route.
    let (st, b) = call(
        &s,
        "POST",
        "database/static-roles/x';DROP--",
        Some(json!({"db_name": "my", "username": hostile[0], "rotation_period": "1h"})),
    )
    .await;
    assert!((400..500).contains(&st), "{st} {b}");
    let (st, list) = call(&s, "LIST", "database/static-roles", None).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(
        list["data"]["keys"],
        json!(["hostile0", "hostile1", "hostile2"])
    );

    // A token whose display name is hostile gets a clean user name.
    let (st, t) = call(
        &s,
        "POST",
        "auth/token/create",
        Some(json!({"display_name": format!("x'; CREATE USER '{pwned}'@'%'; --"), "policies": ["root"]})),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    let token = t["auth"]["client_token"].as_str().unwrap().to_string();
    f.dynamic_role(&s, "app", "1h").await;
    let (st, c) = call_as(&s, "GET", "database/creds/app", Some(&token), Value::Null).await;
    assert_eq!(st, 200, "{c}");
    let user = c["data"]["username"].as_str().unwrap();
    assert!(
        user.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)),
        "{user}"
    );
    assert!(my_can_login(user, c["data"]["password"].as_str().unwrap()).await);
    let (st, b) = revoke(&s, c["lease_id"].as_str().unwrap()).await;
    assert_eq!(st, 204, "{b}");

    assert_eq!(f.table_rows().await, 1, "the table was dropped");
    assert_eq!(
        my_users_named(&mut f.sup, &pwned).await,
        0,
        "SQL was injected"
    );
    assert_eq!(my_users_named(&mut f.sup, &ghost).await, 0, "ghost created");
    f.drop_all().await;
}

// --- Redis ---------------------------------------------------------------------

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
    tokio::time::timeout(
        Duration::from_secs(10),
        redis::Client::open(info)?.get_multiplexed_async_connection(),
    )
    .await
    .expect("redis connect timed out")
}

/// Authenticates (the connection sends `AUTH` before it is handed out;
/// no command follows: a `+@read` user may not even `PING`).
async fn redis_can_login(user: &str, pw: &str) -> bool {
    redis_login(user, pw).await.is_ok()
}

async fn redis_super() -> Option<redis::aio::MultiplexedConnection> {
    let c = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    match tokio::time::timeout(Duration::from_secs(5), c.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            eprintln!("Redis not reachable on 127.0.0.1:6379 ({e}); skipping");
            None
        }
        Err(_) => {
            eprintln!("Redis not answering on 127.0.0.1:6379; skipping");
            None
        }
    }
}

async fn acl(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    redis::cmd("ACL").arg(args).query_async(c).await.unwrap()
}

async fn redis_user_exists(c: &mut redis::aio::MultiplexedConnection, name: &str) -> bool {
    acl(c, &["GETUSER", name]).await != redis::Value::Nil
}

/// An admin allowed everything, and the engine mounted with a
/// configuration `r` that logs in as it.
struct RedisFixture {
    sup: redis::aio::MultiplexedConnection,
    sfx: String,
    admin: String,
}

impl RedisFixture {
    async fn new(s: &common::TestServer) -> Option<Self> {
        let mut sup = redis_super().await?;
        let sfx = suffix();
        let admin = format!("tresor_admin_{sfx}");
        let admin_pw = format!("adm-{}", suffix());
        acl(
            &mut sup,
            &[
                "SETUSER",
                &admin,
                "on",
                &format!(">{admin_pw}"),
                "~*",
                "&*",
                "+@all",
            ],
        )
        .await;
        mount_database(s).await;
        ok(
            s,
            "POST",
            "database/config/r",
            json!({
                "plugin_name": "redis-database-plugin",
                "host": "127.0.0.1",
                "port": 6379,
                "username": admin,
                "password": admin_pw,
                "allowed_roles": "*",
            }),
        )
        .await;
        Some(RedisFixture { sup, sfx, admin })
    }

    async fn dynamic_role(&self, s: &common::TestServer, role: &str, ttl: &str) {
        ok(
            s,
            "POST",
            &format!("database/roles/{role}"),
            json!({
                "db_name": "r",
                "creation_statements": "[\"+@read\", \"~*\"]",
                "default_ttl": ttl,
                "max_ttl": "24h",
            }),
        )
        .await;
    }

    /// Deletes every user whose name carries the suffix (the admin too).
    async fn drop_all(mut self) {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut self.sup)
            .await
            .unwrap();
        for u in users.iter().filter(|u| u.contains(&self.sfx)) {
            acl(&mut self.sup, &["DELUSER", u]).await;
        }
    }
}

#[tokio::test]
async fn redis_dynamic_users_stop_working_after_revoke_and_expiry() {
    let s = dev().await;
    let Some(mut f) = RedisFixture::new(&s).await else {
        return;
    };
    f.dynamic_role(&s, "ro", "1h").await;
    f.dynamic_role(&s, "short", "2s").await;

    let (user, pw, lease_id, ttl) = creds(&s, "ro").await;
    assert_eq!(ttl, 3600);
    let mut c = redis_login(&user, &pw).await.expect("dynamic user logs in");
    let _: Option<String> = redis::cmd("GET")
        .arg(format!("k_{}", f.sfx))
        .query_async(&mut c)
        .await
        .expect("read allowed");
    let set: Result<(), _> = redis::cmd("SET")
        .arg(format!("k_{}", f.sfx))
        .arg("v")
        .query_async(&mut c)
        .await;
    assert!(set.is_err(), "read-only user could write");
    drop(c);
    assert!(!redis_can_login(&user, "wrong").await);

    let (st, b) = revoke(&s, &lease_id).await;
    assert_eq!(st, 204, "{b}");
    assert!(
        !redis_can_login(&user, &pw).await,
        "revoked user still logs in"
    );
    assert!(!redis_user_exists(&mut f.sup, &user).await);
    assert!(lookup(&s, &lease_id).await.is_none(), "revoked lease kept");

    let (user, pw, lease_id, ttl) = creds(&s, "short").await;
    assert_eq!(ttl, 2);
    assert!(
        redis_can_login(&user, &pw).await,
        "short-lived user logs in"
    );
    eventually!(30, "expired Redis user to be deleted", {
        !redis_can_login(&user, &pw).await
    });
    assert!(!redis_user_exists(&mut f.sup, &user).await);
    eventually!(10, "expired lease to be removed", {
        lookup(&s, &lease_id).await.is_none()
    });
    f.drop_all().await;
}

/// The lease expires while Redis refuses the admin's `ACL DELUSER`: the
/// lease manager's attempt fails and is recorded on the lease, which stays
/// until a retry goes through once Redis allows it again.
#[tokio::test]
async fn redis_expiry_refused_by_the_server_is_retried_until_accepted() {
    let s = dev().await;
    let Some(mut f) = RedisFixture::new(&s).await else {
        return;
    };
    f.dynamic_role(&s, "short", "2s").await;
    let (user, pw, lease_id, _) = creds(&s, "short").await;
    assert!(redis_can_login(&user, &pw).await);

    // ACL rules apply at once, also to the engine's open connection.
    let admin = f.admin.clone();
    acl(&mut f.sup, &["SETUSER", &admin, "-acl"]).await;
    let mut last: Value;
    eventually!(30, format!("a failed revocation on the lease: {last}"), {
        last = lookup(&s, &lease_id)
            .await
            .expect("lease kept while refused");
        last["revoke_attempts"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        last["last_revoke_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{last}"
    );
    assert_eq!(last["ttl"], 0, "{last}");
    assert!(
        redis_user_exists(&mut f.sup, &user).await,
        "user gone anyway"
    );
    assert!(redis_can_login(&user, &pw).await);

    acl(&mut f.sup, &["SETUSER", &admin, "+acl"]).await;
    eventually!(90, "the retried revocation to go through", {
        lookup(&s, &lease_id).await.is_none()
    });
    assert!(!redis_user_exists(&mut f.sup, &user).await);
    assert!(!redis_can_login(&user, &pw).await);
    f.drop_all().await;
}

#[tokio::test]
async fn redis_static_role_rotation_retires_the_old_password() {
    let s = dev().await;
    let Some(mut f) = RedisFixture::new(&s).await else {
        return;
    };
    let user = format!("tresor_static_{}", f.sfx);
    acl(
        &mut f.sup,
        &["SETUSER", &user, "on", ">initial", "~*", "+@read"],
    )
    .await;
    ok(
        &s,
        "POST",
        "database/static-roles/s",
        json!({"db_name": "r", "username": user, "rotation_period": "1h"}),
    )
    .await;
    assert!(!redis_can_login(&user, "initial").await, "not rotated");
    let (st, c) = call(&s, "GET", "database/static-creds/s", None).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["data"]["username"], user.as_str());
    assert!(c["data"]["ttl"].as_i64().unwrap() <= 3600);
    let first_rotation = c["data"]["last_vault_rotation"].clone();
    assert!(first_rotation.is_string(), "{c}");
    let pw1 = c["data"]["password"].as_str().unwrap().to_string();
    assert!(redis_can_login(&user, &pw1).await, "first password works");

    let (st, b) = call(&s, "POST", "database/rotate-role/s", Some(json!({}))).await;
    assert_eq!(st, 204, "{b}");
    let pw2 = static_password(&s, "s").await;
    assert_ne!(pw1, pw2);
    assert!(!redis_can_login(&user, &pw1).await, "old password works");
    assert!(redis_can_login(&user, &pw2).await, "new password fails");
    // The user keeps its rules: only the password changed.
    let mut c = redis_login(&user, &pw2).await.unwrap();
    let set: Result<(), _> = redis::cmd("SET")
        .arg(format!("k_{}", f.sfx))
        .arg("v")
        .query_async(&mut c)
        .await;
    assert!(set.is_err(), "rotation widened the user's rules");
    f.drop_all().await;
}

#[tokio::test]
async fn redis_hostile_static_usernames_do_not_inject() {
    let s = dev().await;
    let Some(mut f) = RedisFixture::new(&s).await else {
        return;
    };
    let sfx = f.sfx.clone();
    let canary = format!("canary_{sfx}");
    redis::cmd("SET")
        .arg(&canary)
        .arg("alive")
        .query_async::<()>(&mut f.sup)
        .await
        .unwrap();
    // Names that look like quoting, statements and ACL rules.
    let hostile = [
        format!("q'\"x;FLUSHALL;{sfx}"),
        format!(">pw;+@all;~*;{sfx}"),
        format!("nopass;allkeys;%RW~*;resetpass;{sfx}"),
    ];
    for (i, name) in hostile.iter().enumerate() {
        acl(
            &mut f.sup,
            &["SETUSER", name, "on", ">initial", "~*", "+@read"],
        )
        .await;
        let role = format!("hostile{i}");
        ok(
            &s,
            "POST",
            &format!("database/static-roles/{role}"),
            json!({"db_name": "r", "username": name, "rotation_period": "1h"}),
        )
        .await;
        assert!(
            !redis_can_login(name, "initial").await,
            "{name:?}: not rotated"
        );
        let pw1 = static_password(&s, &role).await;
        assert!(redis_can_login(name, &pw1).await, "{name:?}: new password");
        ok(
            &s,
            "POST",
            &format!("database/rotate-role/{role}"),
            json!({}),
        )
        .await;
        let pw2 = static_password(&s, &role).await;
        assert!(!redis_can_login(name, &pw1).await, "{name:?}: old password");
        let mut c = redis_login(name, &pw2).await.expect("rotated password");
        let set: Result<(), _> = redis::cmd("SET")
            .arg(&canary)
            .arg("overwritten")
            .query_async(&mut c)
            .await;
        assert!(set.is_err(), "{name:?}: rules widened");
    }

    // Names of no user: refused, nothing stored, and no user made (ACL
    // SETUSER would create one).
    for (i, ghost) in [
        format!("ghost'\";FLUSHALL;{sfx}"),
        format!("ghost on >x +@all {sfx}"),
    ]
    .iter()
    .enumerate()
    {
        let role = format!("ghost{i}");
        let (st, b) = call(
            &s,
            "POST",
            &format!("database/static-roles/{role}"),
            Some(json!({"db_name": "r", "username": ghost, "rotation_period": "1h"})),
        )
        .await;
        assert!((400..600).contains(&st), "{ghost:?}: {st} {b}");
        assert!(
            !redis_user_exists(&mut f.sup, ghost).await,
            "{ghost:?}: user created"
        );
        let (st, _) = call(&s, "GET", &format!("database/static-roles/{role}"), None).await;
        assert_eq!(st, 404, "{ghost:?}: refused static role stored");
    }

    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut f.sup)
        .await
        .unwrap();
    let mut ours: Vec<&String> = users.iter().filter(|u| u.contains(&sfx)).collect();
    ours.sort();
    let mut expected: Vec<&String> = hostile.iter().chain([&f.admin]).collect();
    expected.sort();
    assert_eq!(ours, expected, "an extra user appeared");
    let v: Option<String> = redis::cmd("GET")
        .arg(&canary)
        .query_async(&mut f.sup)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("alive"), "data was touched");
    redis::cmd("DEL")
        .arg(&canary)
        .query_async::<()>(&mut f.sup)
        .await
        .unwrap();
    f.drop_all().await;
}

// --- PostgreSQL ------------------------------------------------------------------

async fn pg_super() -> Option<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
        .parse()
        .unwrap();
    cfg.connect_timeout(Duration::from_secs(5));
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            Some(c)
        }
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

/// The engine's own admin loses the right to drop roles: an explicit
/// revocation fails, the lease stays with the failure on it, and the lease
/// manager's retry drops the user once the right is back.
#[tokio::test]
async fn postgres_refused_revocation_is_retried_until_accepted() {
    let Some(sup) = pg_super().await else {
        return;
    };
    let sfx = suffix();
    // A management role of the test's own, so that the shared `postgres`
    // account is never altered.
    let admin = format!("tresor_admin_{sfx}");
    let admin_pw = format!("adm-{}", suffix());
    sup.batch_execute(&format!(
        "CREATE ROLE {admin} WITH LOGIN CREATEROLE PASSWORD '{admin_pw}'"
    ))
    .await
    .unwrap();
    let s = dev().await;
    mount_database(&s).await;
    ok(
        &s,
        "POST",
        "database/config/pg",
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
            "username": admin,
            "password": admin_pw,
            "allowed_roles": "*",
        }),
    )
    .await;
    ok(
        &s,
        "POST",
        "database/roles/app",
        json!({
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            "default_ttl": "1h",
        }),
    )
    .await;
    let (user, _pw, lease_id, _) = creds(&s, "app").await;
    assert!(pg_role_exists(&sup, &user).await);

    sup.batch_execute(&format!("ALTER ROLE {admin} NOCREATEROLE"))
        .await
        .unwrap();
    let (st, b) = revoke(&s, &lease_id).await;
    assert!(st >= 400, "revocation reported done: {st} {b}");
    assert!(!b.to_string().contains(&admin_pw), "{b}");
    assert!(pg_role_exists(&sup, &user).await, "user dropped anyway");
    let l = lookup(&s, &lease_id).await.expect("failed lease forgotten");
    assert!(l["revoke_attempts"].as_u64().unwrap() >= 1, "{l}");
    let err = l["last_revoke_error"].as_str().expect("error recorded");
    assert!(!err.is_empty() && !err.contains(&admin_pw), "{l}");
    assert_eq!(l["ttl"], 0, "{l}");
    // Whoever revoked it considers it dead: no renewal brings it back.
    let (st, b) = call(
        &s,
        "PUT",
        "sys/leases/renew",
        Some(json!({"lease_id": lease_id, "increment": 3600})),
    )
    .await;
    assert!(st >= 400, "a lease being revoked was renewed: {st} {b}");

    sup.batch_execute(&format!("ALTER ROLE {admin} CREATEROLE"))
        .await
        .unwrap();
    eventually!(90, "the retried revocation to go through", {
        lookup(&s, &lease_id).await.is_none()
    });
    assert!(!pg_role_exists(&sup, &user).await, "lease gone, user kept");

    let _ = sup
        .batch_execute(&format!("DROP ROLE IF EXISTS \"{user}\""))
        .await;
    sup.batch_execute(&format!("DROP ROLE IF EXISTS {admin}"))
        .await
        .unwrap();
}
