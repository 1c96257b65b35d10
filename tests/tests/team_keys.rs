//! A team key is never left half-written as a working key that no list shows (issue 32,
//! item 7). Its record (what makes it work) and its index entry (what lists and revokes it) are
//! two keys — two slots of a Redis Cluster, so no one command writes both — and a failure
//! between the two writes must leave a useless listed entry, never a hidden working key. Redis
//! refuses one of the two here through an ACL (NOPERM), as a master dying between them would.
//! Before: one pipeline wrote both, record and index in the order that, cut in the middle, left
//! the key working and unlisted.

use common::redis::Keys;
use workers::gateway::keys::{KeyStore, Scope};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::test_platform::COMPONENT_APPID;

/// `redis-cli args…` on the local Redis.
fn redis_cli(args: &[&str]) -> String {
    wxpipe_tests::redis_nodes::redis_cli(6379, args)
}

fn scope() -> Scope {
    Scope {
        team: "crm".into(),
        appids: vec!["*".into()],
        paths: vec!["cgi-bin/message/custom/send".into()],
        rate_per_sec: 10,
        raw_tokens: false,
        return_to: vec![],
    }
}

/// Stored key records (`…gateway:key:*`), read from Redis itself.
fn records(keys: &Keys) -> usize {
    redis_cli(&[
        "--scan",
        "--pattern",
        &format!("{}gateway:key:*", keys.prefix()),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .count()
}

#[tokio::test]
async fn a_key_cut_between_its_two_writes_is_never_working_and_unlisted() {
    let t = TestNs::new("t-keys-half");
    let keys = Keys::new(&t.ns, COMPONENT_APPID);
    let admin = KeyStore::new(
        common::redis::pool(&wxpipe_tests::redis_url()).unwrap(),
        keys.clone(),
    );
    let user = format!("wxpipe-{}", t.name());
    let limited = KeyStore::new(
        common::redis::pool(&format!("redis://{user}:pw@127.0.0.1:6379/0")).unwrap(),
        keys.clone(),
    );
    let allow = |pattern: String| {
        redis_cli(&[
            "ACL", "SETUSER", &user, "reset", "on", ">pw", &pattern, "+@all",
        ])
    };

    // Creating: the record may be written, the index entry is refused.
    assert_eq!(allow(format!("~{}gateway:key:*", keys.prefix())), "OK");
    let created = limited.create(scope()).await;
    let hidden = records(&keys);

    // Revoking: the index entry may be read and deleted, the record's deletion is refused.
    let (key, record) = admin.create(scope()).await.unwrap();
    allow(format!("~{}", keys.gateway_keys()));
    let revoked = limited.revoke(&record.id).await;
    let works = admin.find(&key).await.unwrap().is_some();
    let listed = admin
        .list()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == record.id);
    redis_cli(&["ACL", "DELUSER", &user]);

    assert!(created.is_err(), "the refused write is an error");
    assert_eq!(hidden, 0, "a created key works with no index entry");
    assert!(revoked.is_err(), "the refused delete is an error");
    assert!(
        !works || listed,
        "the half-revoked key works and no list shows it"
    );
    // Revoking again finishes.
    assert!(admin.revoke(&record.id).await.unwrap());
    assert!(admin.find(&key).await.unwrap().is_none());
    assert_eq!(records(&keys), 0);
}
