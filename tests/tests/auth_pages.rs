//! The authorization pages speak the administrator's language (issue 15): Simplified Chinese
//! by default, English by `Accept-Language` or the switch; the configurable texts escaped;
//! phone buttons first inside WeChat; nothing loaded from elsewhere. The flow itself, in a
//! real browser in both languages with screenshots, is in `tokens.rs`.

use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{IngressHandle, test_config};

async fn ingress(t: &TestNs, name: &str, note: &str) -> IngressHandle {
    let mut config = test_config(&t.ns, vec![wxpipe_tests::amqp_url()]);
    config.auth_texts.platform_name = name.into();
    config.auth_texts.note = note.into();
    let ingress = IngressHandle::start(config).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    ingress
}

async fn get(url: &str, headers: &[(&str, &str)]) -> String {
    let mut r = wxpipe_tests::http().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn chinese_first_english_by_accept_language_or_the_switch() {
    let t = TestNs::new("t-pages-lang");
    let ingress = ingress(&t, "示例平台", "").await;
    let url = ingress.url("/auth");
    let zh = get(&url, &[]).await;
    assert!(zh.contains("<html lang=\"zh-CN\">"), "{zh}");
    for word in ["授权公众号", "授权小程序", "扫码", "示例平台"] {
        assert!(zh.contains(word), "{word} missing");
    }
    let zh2 = get(&url, &[("accept-language", "zh-CN,zh;q=0.9,en;q=0.8")]).await;
    assert!(zh2.contains("<html lang=\"zh-CN\">"));
    let en = get(&url, &[("accept-language", "en-US,en;q=0.9,zh;q=0.5")]).await;
    assert!(en.contains("<html lang=\"en\">"), "{en}");
    assert!(
        en.contains("Authorize an Official Account") && en.contains("Authorize a Mini Program")
    );
    // The visible switch, and `?lang=` winning over the header.
    assert!(en.contains("id=\"lang-switch\"") && en.contains("href=\"/auth?lang=zh-CN\""));
    assert!(zh.contains("href=\"/auth?lang=en\""));
    let switched = get(
        &ingress.url("/auth?lang=zh-CN"),
        &[("accept-language", "en")],
    )
    .await;
    assert!(switched.contains("<html lang=\"zh-CN\">"));
    // The buttons carry the language into the flow.
    assert!(en.contains("/auth/start?auth_type=1&amp;lang=en"));
    // Error pages speak it too.
    let bad = wxpipe_tests::http()
        .get(ingress.url("/auth/callback?auth_code=x&lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("was not started here"));
    let bad = wxpipe_tests::get_text(ingress.url("/auth/callback?auth_code=x")).await;
    assert!(bad.contains("授权链接"), "{bad}");
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn configurable_texts_are_escaped_and_nothing_is_loaded_from_elsewhere() {
    let t = TestNs::new("t-pages-escape");
    let evil = "<script>alert(1)</script>&\"'";
    let ingress = ingress(&t, evil, &format!("note {evil}")).await;
    for path in ["/auth", "/auth?lang=en", "/auth/done?code=none"] {
        let page = get(&ingress.url(path), &[]).await;
        assert!(!page.contains("<script>"), "{path}: {page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;"),
            "{path}"
        );
        // No external font, script or stylesheet: the page renders offline.
        for external in ["<script", "<link", "src=\"http", "url(http", "@import"] {
            assert!(!page.contains(external), "{path} loads {external}");
        }
        assert!(page.contains("name=\"viewport\""));
    }
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn inside_wechat_the_phone_buttons_come_first() {
    let t = TestNs::new("t-pages-wechat");
    let ingress = ingress(&t, "wxpipe", "").await;
    let url = ingress.url("/auth");
    let wechat = get(
        &url,
        &[(
            "user-agent",
            "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Mobile/15E148 MicroMessenger/8.0.50",
        )],
    )
    .await;
    let pos = |page: &str, id: &str| page.find(id).unwrap();
    assert!(pos(&wechat, "id=\"mobile-1\"") < pos(&wechat, "id=\"pc-1\""));
    let desktop = get(&url, &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")]).await;
    assert!(pos(&desktop, "id=\"pc-1\"") < pos(&desktop, "id=\"mobile-1\""));
    ingress.stop().await.unwrap();
}
