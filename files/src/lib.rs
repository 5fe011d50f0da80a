//! Files in: what a file says, with the structure its format has, cut into chunks for retrieval.
//!
//! [`extract`] tells a file's format from its bytes (its name only breaks ties between text
//! formats) and reads its text as [`Section`]s: a PDF's pages, the heading a DOCX, HTML or
//! Markdown passage sits under, tables as rows of cells separated by ` | `. [`split`] cuts the
//! sections into chunks of at most a number of the embedder's tokens, never across a section, at
//! the largest unit that fits (paragraph, line, sentence, word), each chunk keeping its section's
//! page and heading. A file that cannot be read is a [`FileError`] saying why; nothing here
//! panics on its own account, but the PDF reader may on a malformed file, so callers run
//! [`extract`] where a panic is caught.

mod docx;
mod html;
mod markdown;
mod pdf;
mod split;

pub use split::{split, Piece, TokenCounter};

/// What a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Docx,
    Html,
    Markdown,
    Text,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pdf => "pdf",
            Self::Docx => "docx",
            Self::Html => "html",
            Self::Markdown => "markdown",
            Self::Text => "text",
        }
    }
}

/// A run of text under one heading, or on one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    pub text: String,
    /// 1-based, for formats with pages (PDF).
    pub page: Option<u32>,
    /// The nearest heading above the text, for formats with headings.
    pub heading: Option<String>,
}

/// Sections as a reader meets them: text goes into the current one; a heading closes it (when it
/// has text) and opens the next under it.
#[derive(Default)]
struct Sections {
    done: Vec<Section>,
    current: Section,
}

impl Sections {
    fn text(&mut self) -> &mut String {
        &mut self.current.text
    }

    fn heading(&mut self, title: String) {
        self.flush();
        self.current.heading = Some(title);
    }

    /// Closes the current section; the next keeps its heading until a new one.
    fn flush(&mut self) {
        let next = Section {
            heading: self.current.heading.clone(),
            ..Section::default()
        };
        let done = std::mem::replace(&mut self.current, next);
        if !done.text.trim().is_empty() {
            self.done.push(done);
        }
    }

    fn finish(mut self) -> Vec<Section> {
        self.flush();
        self.done
    }
}

/// A file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub format: Format,
    /// Pages, for formats with pages.
    pub pages: Option<u32>,
    pub sections: Vec<Section>,
}

/// Why a file was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the file is encrypted (password-protected); upload a copy without a password")]
    Encrypted,
    #[error("the file could not be read: {0}")]
    Unreadable(String),
    #[error("no text could be found in the file (a scanned PDF needs OCR first)")]
    NoText,
}

/// Bounds on what reading one file may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The file's own bytes; also the most its compressed parts may expand to.
    pub max_bytes: usize,
}

/// Reads `bytes` (a file named `name`) as its format says.
pub fn extract(name: &str, bytes: &[u8], limits: Limits) -> Result<Extracted, FileError> {
    if bytes.is_empty() {
        return Err(FileError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(FileError::TooLarge(format!(
            "the file has {} bytes, more than the {} allowed (limits.max_file_bytes)",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let format = sniff(name, bytes)?;
    let extracted = match format {
        Format::Pdf => pdf::extract(bytes)?,
        Format::Docx => docx::extract(bytes, limits)?,
        Format::Html => html::extract(text_of(bytes)?),
        Format::Markdown => markdown::extract(text_of(bytes)?),
        Format::Text => plain(text_of(bytes)?),
    };
    let sections: Vec<Section> = extracted
        .sections
        .into_iter()
        .map(|s| Section {
            text: tidy(&s.text),
            ..s
        })
        .filter(|s| !s.text.is_empty())
        .collect();
    if sections.is_empty() {
        return Err(FileError::NoText);
    }
    Ok(Extracted {
        sections,
        ..extracted
    })
}

/// The format the bytes are in. Binary formats by their magic numbers, whatever the name says;
/// text by the name's extension (HTML also by its opening tag).
fn sniff(name: &str, bytes: &[u8]) -> Result<Format, FileError> {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if bytes.starts_with(b"%PDF-") {
        return Ok(Format::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok(Format::Docx); // docx::extract refuses a zip that is not a Word document
    }
    if extension == "pdf" || extension == "docx" {
        return Err(FileError::Unsupported(format!(
            "`{name}` is not a {} file (its first bytes say otherwise)",
            extension.to_uppercase()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        FileError::Unsupported(format!(
            "`{name}` is not PDF, DOCX or UTF-8 text (HTML, Markdown, plain text)"
        ))
    })?;
    let head = text
        .trim_start()
        .get(..15)
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(match extension.as_str() {
        "html" | "htm" | "xhtml" => Format::Html,
        "md" | "markdown" => Format::Markdown,
        _ if head.starts_with("<!doctype html") || head.starts_with("<html") => Format::Html,
        _ => Format::Text,
    })
}

fn text_of(bytes: &[u8]) -> Result<&str, FileError> {
    std::str::from_utf8(bytes).map_err(|e| FileError::Unreadable(format!("not UTF-8 text: {e}")))
}

/// Plain text: one section; paragraphs stay as written.
fn plain(text: &str) -> Extracted {
    Extracted {
        format: Format::Text,
        pages: None,
        sections: vec![Section {
            text: text.to_string(),
            ..Section::default()
        }],
    }
}

/// Each line's blanks collapsed to single spaces, runs of blank lines down to one, control
/// characters out.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines() {
        let line: String = line.chars().filter(|c| !c.is_control() || *c == '\t').collect();
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        blank = false;
        out.push_str(&words.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_bytes: 1 << 20 };

    #[test]
    fn formats_come_from_the_bytes_and_the_name_only_among_text() {
        assert_eq!(sniff("a.txt", b"%PDF-1.7 ..."), Ok(Format::Pdf));
        assert_eq!(sniff("notes.md", b"# Title"), Ok(Format::Markdown));
        assert_eq!(sniff("page", b"  <!DOCTYPE html><p>x"), Ok(Format::Html));
        assert_eq!(sniff("notes", b"just words"), Ok(Format::Text));
        assert!(matches!(
            sniff("report.pdf", b"hello"),
            Err(FileError::Unsupported(_))
        ));
        assert!(matches!(
            sniff("x.bin", &[0xff, 0xfe, 0x00, 0x81]),
            Err(FileError::Unsupported(_))
        ));
    }

    #[test]
    fn empty_oversized_and_textless_files_are_refused() {
        assert_eq!(extract("a.txt", b"", LIMITS), Err(FileError::Empty));
        let small = Limits { max_bytes: 4 };
        assert!(matches!(
            extract("a.txt", b"hello", small),
            Err(FileError::TooLarge(_))
        ));
        assert_eq!(extract("a.txt", b" \n\n \t\n", LIMITS), Err(FileError::NoText));
        assert_eq!(
            extract("a.html", b"<html><script>var x;</script></html>", LIMITS),
            Err(FileError::NoText)
        );
    }

    #[test]
    fn tidy_keeps_paragraphs_and_drops_control_characters() {
        assert_eq!(tidy("a  \n\n\n\nb\x07c\n  \n d \t e"), "a\n\nbc\n\nd e");
    }
}
