//! Markdown (CommonMark with tables): headings start sections; paragraphs, list items, code and
//! table rows (cells separated by ` | `) are the section's text, without the markup.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use crate::{Extracted, Format, Sections};

pub fn extract(text: &str) -> Extracted {
    let mut sections = Sections::default();
    let mut heading: Option<String> = None;
    let mut row: Option<Vec<String>> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH) {
        // Where inline text goes: a heading being read, a table cell, or the section.
        let mut push = |s: &str| match (heading.as_mut(), row.as_mut()) {
            (Some(h), _) => h.push_str(s),
            (None, Some(cells)) => {
                if let Some(cell) = cells.last_mut() {
                    cell.push_str(s);
                }
            }
            (None, None) => sections.text().push_str(s),
        };
        match event {
            Event::Text(t) | Event::Code(t) => push(&t),
            Event::SoftBreak => push(" "),
            Event::HardBreak => push("\n"),
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let title = heading.take().unwrap_or_default().trim().to_string();
                if !title.is_empty() {
                    sections.heading(title);
                }
            }
            Event::Start(Tag::TableHead | Tag::TableRow) => row = Some(Vec::new()),
            Event::Start(Tag::TableCell) => {
                if let Some(cells) = row.as_mut() {
                    cells.push(String::new());
                }
            }
            Event::End(TagEnd::TableHead | TagEnd::TableRow) => {
                if let Some(cells) = row.take() {
                    let cells: Vec<&str> = cells.iter().map(|c| c.trim()).collect();
                    sections.text().push_str(&cells.join(" | "));
                    sections.text().push('\n');
                }
            }
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::CodeBlock | TagEnd::Table) => {
                sections.text().push_str("\n\n");
            }
            _ => {}
        }
    }
    Extracted {
        format: Format::Markdown,
        pages: None,
        sections: sections.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_start_sections_and_tables_are_rows() {
        let doc = "Intro text.\n\n# Espresso\n\nBrewed at *nine*\nbars.\n\n## Prices\n\n| Drink | Price |\n|---|---|\n| Espresso | 2.50 |\n";
        let got: Vec<(Option<String>, String)> = extract(doc)
            .sections
            .into_iter()
            .map(|s| (s.heading, crate::tidy(&s.text)))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, "Intro text.".to_string()),
                (Some("Espresso".into()), "Brewed at nine bars.".into()),
                (Some("Prices".into()), "Drink | Price\nEspresso | 2.50".into()),
            ]
        );
    }
}
