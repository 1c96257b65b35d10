//! The signed-query parser takes arbitrary query strings without a panic (issue 9); see
//! `common/tests/fuzz.rs` for the other parsers and `scripts/fuzz` for long runs.

use ingress::signed_query::SignedQuery;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("WXPIPE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const REAL: &str = "signature=cc0c594499c1634947d5b502f158ee518947db27&timestamp=1715943329&nonce=1590219412&openid=o9Ag&encrypt_type=aes&msg_signature=cc0c594499c1634947d5b502f158ee518947db27";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_queries(q in "\\PC{0,400}") {
        let _ = SignedQuery::parse(Some(&q));
    }

    #[test]
    fn mutated_real_queries(edits in proptest::collection::vec((any::<usize>(), any::<char>()), 1..8)) {
        let mut q: Vec<char> = REAL.chars().collect();
        for (at, c) in edits {
            let i = at % q.len();
            q[i] = c;
        }
        let q: String = q.into_iter().collect();
        if let Ok(parsed) = SignedQuery::parse(Some(&q)) {
            let _ = parsed.is_fresh(common::unix_now(), std::time::Duration::from_secs(300));
        }
    }

    #[test]
    fn repeated_and_huge_parameters(n in 0usize..5000, name in "(timestamp|nonce|signature|msg_signature|echostr|x)") {
        let q = format!("{name}={}&{name}=1&timestamp=1", "9".repeat(n));
        let _ = SignedQuery::parse(Some(&q));
    }
}
