//! A real headless Chromium driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`, installed by `scripts/dev test`): just the
//! commands the page tests use, over plain HTTP to `chromedriver`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session, closed (and chromedriver stopped) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn binary(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/lib/chromium"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path.display().to_string();
        }
    }
    panic!(
        "{name} is missing: run the tests with `scripts/dev test`, which installs chromium and chromium-driver"
    );
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(binary("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1600"],
            }
        }}});
        let answer: Value = ureq::post(&format!("{root}/session"))
            .send_json(capabilities)
            .unwrap_or_else(|err| panic!("no browser session: {err}"))
            .into_json()
            .unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap().to_string();
        Self {
            driver,
            base: format!("{root}/session/{session}"),
        }
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let request = ureq::request(method, &format!("{}{path}", self.base));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(response) => Ok(response.into_json::<Value>().unwrap()["value"].take()),
            Err(ureq::Error::Status(status, response)) => Err(format!(
                "webdriver {method} {path}: {status} {}",
                response.into_string().unwrap_or_default()
            )),
            Err(err) => Err(format!("webdriver {method} {path}: {err}")),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Clicks the first element matching `selector`, finding it again if
    /// the page redrew it in between (it refreshes every 2 s).
    pub fn click_on(&self, selector: &str) {
        self.wait(&format!("a click on `{selector}`"), || {
            let element = self.all(selector).into_iter().next()?;
            self.try_call("POST", &format!("/element/{}/click", element.0), Some(json!({})))
                .ok()
                .map(drop)
        });
    }

    /// The text of the first element matching `selector`, if there is one.
    pub fn text_of(&self, selector: &str) -> Option<String> {
        self.run_with(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            &[selector],
        )
        .as_str()
        .map(str::to_string)
    }

    /// An attribute of the first element matching `selector`, if there is one.
    pub fn attribute_of(&self, selector: &str, name: &str) -> Option<String> {
        self.run_with(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            &[selector, name],
        )
        .as_str()
        .map(str::to_string)
    }

    fn run_with(&self, script: &str, args: &[&str]) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// The address bar.
    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    /// Runs `script` in the page; its return value.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Every element matching the CSS `selector`.
    pub fn all(&self, selector: &str) -> Vec<Element> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": selector})),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Element(e[ELEMENT].as_str().unwrap().to_string()))
            .collect()
    }

    /// The first element matching `selector`, waiting up to 30 s for it.
    pub fn find(&self, selector: &str) -> Element {
        self.wait(&format!("`{selector}` on the page"), || {
            self.all(selector).into_iter().next()
        })
    }

    /// Waits up to 30 s until `check` gives something.
    pub fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = check() {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into an element.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({"text": text})),
        );
    }

    /// Empties the first field matching `selector` and types `text` into it.
    pub fn fill(&self, selector: &str, text: &str) {
        let element = self.find(selector);
        self.call("POST", &format!("/element/{}/clear", element.0), Some(json!({})));
        self.type_into(&element, text);
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let encoded = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
