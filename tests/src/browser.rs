//! A real headless Chromium (Debian's package, installed by `scripts/test`) for the browser
//! tests, and the screenshots they keep as artifacts in `target/test-artifacts/{dir}/`.

use std::path::PathBuf;
use std::time::Duration;

/// Chromium's path: `WXPIPE_CHROMIUM`, else `/usr/bin/chromium`; panics with how to get it.
pub fn chromium() -> PathBuf {
    let path = std::env::var("WXPIPE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: `apt-get install chromium` (./scripts/test installs it), or set WXPIPE_CHROMIUM",
        path.display()
    );
    path
}

/// A headless Chromium with a window of `size`.
pub fn launch(size: (u32, u32)) -> anyhow::Result<headless_chrome::Browser> {
    use headless_chrome::{Browser, LaunchOptions};
    use std::ffi::OsStr;
    Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chromium()))
            .headless(true)
            .sandbox(false)
            .window_size(Some(size))
            .args(vec![
                OsStr::new("--disable-gpu"),
                OsStr::new("--disable-background-networking"),
                OsStr::new("--disable-component-update"),
                OsStr::new("--disable-sync"),
                OsStr::new("--no-first-run"),
                OsStr::new("--disable-quic"),
            ])
            .idle_browser_timeout(Duration::from_secs(60))
            .build()?,
    )
}

/// `target/test-artifacts/{dir}` (created).
pub fn artifacts(dir: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join(dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Saves a PNG of the whole page as `target/test-artifacts/{dir}/{name}.png`.
pub fn screenshot(tab: &headless_chrome::Tab, dir: &str, name: &str) -> anyhow::Result<PathBuf> {
    use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
    let path = artifacts(dir).join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    Ok(path)
}

/// Waits until `script` evaluates to `true` in `tab`, at most `timeout`; the error names `what`
/// and quotes what the page shows.
pub fn wait_until(
    tab: &headless_chrome::Tab,
    script: &str,
    what: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = tab.evaluate(script, false)?.value;
        if v == Some(serde_json::Value::Bool(true)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let body = tab.evaluate("document.body.innerText", false)?.value;
            anyhow::bail!("timed out waiting for {what}; the page shows: {body:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The inner text of the first element matching `selector`.
pub fn text_of(tab: &headless_chrome::Tab, selector: &str) -> anyhow::Result<String> {
    tab.wait_for_element(selector)?.get_inner_text()
}

/// A Chinese-speaking browser's tab on the operator console at `console`, logged in with
/// `token` (typed once, never in the URL); what the page showed before logging in is
/// screenshotted as `login` in `dir` when `dir` is given.
pub fn console_tab(
    browser: &headless_chrome::Browser,
    console: &str,
    token: &str,
    dir: Option<&str>,
) -> anyhow::Result<(std::sync::Arc<headless_chrome::Tab>, Option<PathBuf>)> {
    let tab = browser.new_tab()?;
    tab.set_user_agent(
        "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0",
        Some("zh-CN,zh;q=0.9"),
        None,
    )?;
    tab.navigate_to(console)?.wait_until_navigated()?;
    let shot = match dir {
        Some(d) => Some(screenshot(&tab, d, "login")?),
        None => None,
    };
    tab.wait_for_element("#token")?.click()?;
    tab.type_str(token)?;
    tab.press_key("Enter")?;
    wait_until(
        &tab,
        "!document.querySelector('#tabs').hidden",
        "the logged-in page",
        Duration::from_secs(10),
    )?;
    anyhow::ensure!(!tab.get_url().contains(token), "the token is in the URL");
    Ok((tab, shot))
}
