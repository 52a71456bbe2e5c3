//! `fs.changes`: a compact record of each file-system change, filtered by
//! file extension and change kind.

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// Extensions consumers may pick; `normalize_params` maps `.PDF ` to `pdf`.
const EXTENSIONS: &[(&str, &str)] = &[
    ("txt", "Plain text"),
    ("md", "Markdown"),
    ("csv", "Comma-separated values"),
    ("json", "JSON documents"),
    ("log", "Log files"),
    ("pdf", "PDF documents"),
    ("docx", "Word documents"),
    ("xlsx", "Excel workbooks"),
    ("jpg", "JPEG images"),
    ("png", "PNG images"),
    ("mp4", "MP4 video"),
    ("zip", "Zip archives"),
    ("gz", "Gzip-compressed files"),
    ("tar", "Tar archives"),
    ("parquet", "Parquet tables"),
    ("rs", "Rust sources"),
    ("py", "Python sources"),
];

#[derive(Deserialize)]
struct FsPayload {
    path: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    mtime: Option<f64>,
    #[serde(default)]
    is_dir: bool,
}

/// The compact change record consumers receive.
#[derive(Serialize)]
struct Change<'a> {
    kind: &'a str,
    path: &'a str,
    ext: Option<&'a str>,
    is_dir: bool,
    size: Option<u64>,
    mtime: Option<f64>,
}

/// The key. Stateless.
#[derive(Default)]
pub struct FsChanges;

/// `fs.insert` -> `insert`; `None` for types outside `fs.`.
fn kind_of(event_type: &str) -> Option<&str> {
    event_type.strip_prefix("fs.")
}

/// The lowercase extension of the last path component, if any.
fn extension(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then_some(ext)
}

impl EventKey for FsChanges {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("fs.changes", "fs.*")
            .display_name("File changes")
            .description("One compact record per file-system change, filtered by extension and kind")
            .param(ParamDef::multi(
                "extensions",
                "Only files with one of these extensions (case and leading dots are ignored); empty: all",
                EXTENSIONS,
            ))
            .param(ParamDef::enumeration(
                "kinds",
                "Only this kind of change; empty: all",
                &[
                    ("insert", "A file or directory appeared"),
                    ("update", "A file or directory changed"),
                    ("delete", "A file or directory was removed"),
                ],
            ))
            .custom_schema(
                r#"{"type":"object","required":["kind","path"],"properties":{"kind":{"enum":["insert","update","delete"]},"path":{"type":"string"}}}"#,
            )
            .implements(Functions::NORMALIZE_PARAMS | Functions::MATCHES | Functions::PROCESS)
    }

    fn normalize_params(&self, _api: &dyn Api, params: &mut Params) -> Result<(), Error> {
        let normalized: Vec<String> = params
            .multi("extensions")
            .into_iter()
            .map(|e| e.trim_start_matches('.').to_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        if params.get("extensions").is_some() {
            params.set("extensions", normalized.join(","));
        }
        if let Some(kind) = params.get("kinds") {
            let kind = kind.trim().to_lowercase();
            params.set("kinds", kind);
        }
        Ok(())
    }

    fn matches(&self, event: &RawEvent, params: &Params) -> bool {
        let Some(kind) = kind_of(&event.event_type) else {
            return false;
        };
        if params
            .get("kinds")
            .is_some_and(|k| !k.is_empty() && k != kind)
        {
            return false;
        }
        let wanted = params.multi("extensions");
        if wanted.is_empty() {
            return true;
        }
        let Ok(payload) = event.json::<FsPayload>() else {
            return false;
        };
        extension(&payload.path)
            .is_some_and(|ext| wanted.iter().any(|w| w.eq_ignore_ascii_case(ext)))
    }

    fn process(
        &self,
        _api: &dyn Api,
        event: &RawEvent,
        _params: &Params,
    ) -> Result<Outcome, Error> {
        let payload: FsPayload = event.json()?;
        let kind = kind_of(&event.event_type).ok_or_else(|| {
            Error::msg(format!("`{}` is not a file-system event", event.event_type))
        })?;
        let ext = extension(&payload.path).map(str::to_lowercase);
        Outcome::emit(&Change {
            kind,
            path: &payload.path,
            ext: ext.as_deref(),
            is_dir: payload.is_dir,
            size: payload.size,
            mtime: payload.mtime,
        })
    }
}

weir_sdk::export_keys!(FsChanges);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::MockApi;

    #[test]
    fn normalize_lowercases_trims_and_strips_dots() {
        let mut p = Params::of(&[("extensions", " .PDF, ..Txt ,,md"), ("kinds", " Insert ")]);
        FsChanges.normalize_params(&MockApi::new(), &mut p).unwrap();
        assert_eq!(p.get("extensions"), Some("pdf,txt,md"));
        assert_eq!(p.get("kinds"), Some("insert"));
    }

    #[test]
    fn matches_kind_and_extension() {
        let p = Params::of(&[("extensions", "pdf"), ("kinds", "insert")]);
        let ev = |t: &str, path: &str| RawEvent::new(t, &format!(r#"{{"path":"{path}"}}"#));
        assert!(FsChanges.matches(&ev("fs.insert", "/a/Report.PDF"), &p));
        assert!(!FsChanges.matches(&ev("fs.update", "/a/r.pdf"), &p));
        assert!(!FsChanges.matches(&ev("fs.insert", "/a/r.txt"), &p));
        assert!(!FsChanges.matches(&ev("fs.insert", "/a/.pdf"), &p));
        assert!(!FsChanges.matches(&ev("deal.status.changed", "/a/r.pdf"), &p));
        assert!(FsChanges.matches(&ev("fs.delete", "/a/x"), &Params::default()));
    }

    #[test]
    fn process_emits_compact_record() {
        let ev = RawEvent::new("fs.delete", r#"{"path":"/a/b.CSV","size":10,"extra":1}"#);
        let out = FsChanges
            .process(&MockApi::new(), &ev, &Params::default())
            .unwrap();
        assert_eq!(
            out.json().unwrap(),
            serde_json::json!({"kind":"delete","path":"/a/b.CSV","ext":"csv","is_dir":false,"size":10,"mtime":null})
        );
    }
}
