//! `hostile.chaos`: misbehaves on demand. The payload's `do` field picks the
//! misbehaviour, so that one batch can mix good and bad events.
//!
//! In `matches`: `loop` spins forever, `api` calls the host API, `panic`
//! panics. In `process`: `loop`, `alloc` (unbounded allocation), `panic`,
//! `huge` (4 MiB output), `bad_json`, `error`, `stdout` (prints), `probe`
//! (reports what the sandbox lets it see), `call` (calls the host API with
//! the payload's `method`, `path` and `body`, and emits `{ok}` with the
//! answer or `{status, message}` with the error); anything else echoes the
//! payload.

use weir_sdk::prelude::*;

/// The key.
#[derive(Default)]
pub struct Chaos;

fn action(event: &RawEvent) -> String {
    event.field_str("do").unwrap_or_default()
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl EventKey for Chaos {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("hostile.chaos", "*")
            .description("Misbehaves as the payload's `do` field says")
            .custom_schema(r#"{"type":"object"}"#)
            .implements(Functions::MATCHES | Functions::PROCESS | Functions::PRE_CONSUME)
    }

    fn matches(&self, event: &RawEvent, _params: &Params) -> bool {
        match action(event).as_str() {
            "match_loop" => spin(),
            "match_panic" => panic!("matches panicked on purpose"),
            "match_api" => {
                // The host refuses this; a well-behaved key would never try.
                let _ = weir_sdk::HostApi.call("GET", "/v1/keys", None);
                true
            }
            "skip" => false,
            _ => true,
        }
    }

    fn process(&self, api: &dyn Api, event: &RawEvent, _params: &Params) -> Result<Outcome, Error> {
        match action(event).as_str() {
            "loop" => spin(),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("process panicked on purpose"),
            "huge" => Ok(Outcome::Emit(format!("\"{}\"", "x".repeat(4 << 20)))),
            "bad_json" => Ok(Outcome::Emit("{not json".into())),
            "error" => Err(Error::msg("refused on purpose")),
            "drop" => Ok(Outcome::Drop),
            "log_flood" => {
                // 20,000 lines of 1 KiB through the log import, and more on
                // stdout: the host must not write them all.
                let line = "x".repeat(1024);
                for _ in 0..20_000 {
                    weir_sdk::info!("{line}");
                }
                for _ in 0..1_000 {
                    println!("{line}");
                }
                Ok(Outcome::Drop)
            }
            "stdout" => {
                println!("hello from the guest's stdout");
                eprintln!("hello from the guest's stderr");
                weir_sdk::info!("hello from the log import");
                Ok(Outcome::Emit("{}".into()))
            }
            "api" => {
                let echoed: serde_json::Value =
                    api.send_json("POST", "/v1/echo", &serde_json::json!({"n": 1}))?;
                Outcome::emit(&echoed)
            }
            "call" => {
                let field = |name: &str| event.field_str(name).unwrap_or_default();
                let body = event.field_str("body");
                Outcome::emit(
                    &match api.call(&field("method"), &field("path"), body.as_deref()) {
                        Ok(text) => serde_json::json!({ "ok": text }),
                        Err(e) => serde_json::json!({ "status": e.status, "message": e.message }),
                    },
                )
            }
            "probe" => Outcome::emit(&serde_json::json!({
                "env": std::env::vars().count(),
                "args": std::env::args().count(),
                "fs_root": std::fs::read_dir("/").map(|_| "readable".to_string()).unwrap_or_else(|e| e.to_string()),
                "fs_etc": std::fs::read_to_string("/etc/passwd").map(|_| "readable".to_string()).unwrap_or_else(|e| e.to_string()),
                "net": std::net::TcpStream::connect("127.0.0.1:7070").map(|_| "connected".to_string()).unwrap_or_else(|e| e.to_string()),
            })),
            _ => Ok(Outcome::Emit(event.payload.clone())),
        }
    }

    fn pre_consume(
        &self,
        _api: &dyn Api,
        _subscription_id: &str,
        params: &Params,
    ) -> Result<(), Error> {
        Err(Error::msg(format!(
            "pre-consume refuses {} params",
            params.iter().count()
        )))
    }
}

weir_sdk::export_keys!(Chaos);
