//! DOCX: `word/document.xml` inside the zip, read as a stream of XML events. A paragraph whose
//! style is a heading (`Heading1`…, `Title`) starts a section under it; a table becomes one line
//! per row, its cells separated by ` | `. The document part is read through a bound, so a zip
//! bomb stops at the limit instead of filling memory.

use std::io::{Cursor, Read};

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::{Extracted, FileError, Format, Limits, Section, Sections};

const DOCUMENT: &str = "word/document.xml";

pub fn extract(bytes: &[u8], limits: Limits) -> Result<Extracted, FileError> {
    let unreadable = |e: &dyn std::fmt::Display| FileError::Unreadable(e.to_string());
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| unreadable(&e))?;
    let mut part = match archive.by_name(DOCUMENT) {
        Ok(part) => part,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(FileError::Unsupported(
                "a zip archive that is not a Word document (no word/document.xml)".into(),
            ))
        }
        Err(zip::result::ZipError::UnsupportedArchive(why)) if why.contains("assword") => {
            return Err(FileError::Encrypted)
        }
        Err(e) => return Err(unreadable(&e)),
    };
    if part.encrypted() {
        return Err(FileError::Encrypted);
    }
    let bound = limits.max_bytes as u64;
    let mut xml = Vec::new();
    (&mut part)
        .take(bound + 1)
        .read_to_end(&mut xml)
        .map_err(|e| unreadable(&e))?;
    if xml.len() as u64 > bound {
        return Err(FileError::TooLarge(format!(
            "the document expands to more than {bound} bytes (limits.max_file_bytes): refused as a zip bomb"
        )));
    }
    Ok(Extracted {
        format: Format::Docx,
        pages: None,
        sections: sections(&xml).map_err(|e| unreadable(&e))?,
    })
}

/// Where the reader is inside the body.
#[derive(Default)]
struct State {
    sections: Sections,
    /// The paragraph being read, and whether its style is a heading.
    paragraph: String,
    heading: bool,
    /// Cells of the table row being read (tables may nest; rows of inner tables are flattened).
    row: Vec<String>,
    table_depth: usize,
}

impl State {
    fn end_paragraph(&mut self) {
        let text = std::mem::take(&mut self.paragraph);
        let heading = std::mem::take(&mut self.heading);
        if self.table_depth > 0 {
            match self.row.last_mut() {
                Some(cell) if !cell.is_empty() => {
                    cell.push(' ');
                    cell.push_str(text.trim());
                }
                Some(cell) => cell.push_str(text.trim()),
                None => self.row.push(text.trim().to_string()),
            }
            return;
        }
        if heading && !text.trim().is_empty() {
            self.sections.heading(text.trim().to_string());
            return;
        }
        self.sections.text().push_str(&text);
        self.sections.text().push_str("\n\n");
    }

    fn end_row(&mut self) {
        let cells: Vec<String> = std::mem::take(&mut self.row);
        if cells.iter().any(|c| !c.is_empty()) {
            self.sections.text().push_str(&cells.join(" | "));
            self.sections.text().push('\n');
        }
    }
}

fn sections(xml: &[u8]) -> Result<Vec<Section>, quick_xml::Error> {
    let mut reader = Reader::from_reader(xml);
    let mut state = State::default();
    let mut in_text = false;
    let mut buffer = Vec::new();
    loop {
        match reader.read_event_into(&mut buffer)? {
            Event::Start(e) => match e.local_name().as_ref() {
                "t" => in_text = true,
                "tbl" => state.table_depth += 1,
                "tc" => state.row.push(String::new()),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                "pStyle" => {
                    let style = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == "val")
                        .map(|a| a.value.to_ascii_lowercase())
                        .unwrap_or_default();
                    state.heading = style.starts_with("heading") || style == "title";
                }
                "tab" => state.paragraph.push('\t'),
                "br" | "cr" => state.paragraph.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => {
                let text = t.xml10_content();
                let text = quick_xml::escape::unescape(&text).map_err(quick_xml::Error::from)?;
                state.paragraph.push_str(&text);
            }
            Event::GeneralRef(r) if in_text => {
                let entity = format!("&{};", r.xml10_content());
                let text = quick_xml::escape::unescape(&entity).map_err(quick_xml::Error::from)?;
                state.paragraph.push_str(&text);
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => state.end_paragraph(),
                "tr" => state.end_row(),
                "tbl" => {
                    state.table_depth = state.table_depth.saturating_sub(1);
                    state.sections.text().push('\n');
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    Ok(state.sections.finish())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn docx(body: &str) -> anyhow::Result<Vec<u8>> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file(DOCUMENT, options)?;
        let xml = format!(
            r#"<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
        );
        zip.write_all(xml.as_bytes())?;
        Ok(zip.finish()?.into_inner())
    }

    fn paragraph(style: Option<&str>, text: &str) -> String {
        let style = style.map_or(String::new(), |s| {
            format!(r#"<w:pPr><w:pStyle w:val="{s}"/></w:pPr>"#)
        });
        format!("<w:p>{style}<w:r><w:t>{text}</w:t></w:r></w:p>")
    }

    #[test]
    fn headings_start_sections_and_tables_are_rows() -> anyhow::Result<()> {
        let cell = |t: &str| format!("<w:tc>{}</w:tc>", paragraph(None, t));
        let body = [
            paragraph(None, "Before any heading."),
            paragraph(Some("Heading1"), "Prices"),
            paragraph(None, "Coffee &amp; tea cost:"),
            format!(
                "<w:tbl><w:tr>{}{}</w:tr><w:tr>{}{}</w:tr></w:tbl>",
                cell("Espresso"),
                cell("2.50"),
                cell("Tea"),
                cell("1.80")
            ),
            paragraph(Some("Heading2"), "Hours"),
            paragraph(None, "Open daily."),
        ]
        .concat();
        let extracted = extract(&docx(&body)?, Limits { max_bytes: 1 << 20 })?;
        let got: Vec<(Option<&str>, &str)> = extracted
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.text.trim()))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, "Before any heading."),
                (
                    Some("Prices"),
                    "Coffee & tea cost:\n\nEspresso | 2.50\nTea | 1.80"
                ),
                (Some("Hours"), "Open daily."),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_zip_bomb_stops_at_the_bound() -> anyhow::Result<()> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(DOCUMENT, zip::write::SimpleFileOptions::default())?;
        zip.write_all(&vec![b' '; 4 << 20])?;
        let bomb = zip.finish()?.into_inner();
        assert!(
            bomb.len() < 64 << 10,
            "4 MiB of spaces compress to {} bytes",
            bomb.len()
        );
        let refused = extract(&bomb, Limits { max_bytes: 1 << 20 });
        assert!(matches!(refused, Err(FileError::TooLarge(_))), "{refused:?}");
        Ok(())
    }

    #[test]
    fn a_zip_that_is_not_a_word_document_is_refused() -> anyhow::Result<()> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("hello.txt", zip::write::SimpleFileOptions::default())?;
        zip.write_all(b"hello")?;
        let archive = zip.finish()?.into_inner();
        let refused = extract(&archive, Limits { max_bytes: 1 << 20 });
        assert!(matches!(refused, Err(FileError::Unsupported(_))), "{refused:?}");
        Ok(())
    }
}
