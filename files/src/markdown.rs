//! Markdown (CommonMark with tables): headings start sections; paragraphs, list items, code and
//! table rows (cells separated by ` | `) are the section's text, without the markup.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use crate::{Extracted, Format, Section};

pub fn extract(text: &str) -> Extracted {
    let mut sections = Vec::new();
    let mut current = Section::default();
    let mut heading: Option<String> = None;
    let mut row: Option<Vec<String>> = None;
    let push =
        |current: &mut Section, heading: &mut Option<String>, row: &mut Option<Vec<String>>, s: &str| {
            if let Some(h) = heading.as_mut() {
                h.push_str(s);
            } else if let Some(cells) = row.as_mut() {
                if let Some(cell) = cells.last_mut() {
                    cell.push_str(s);
                }
            } else {
                current.text.push_str(s);
            }
        };
    for event in Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let title = heading.take().unwrap_or_default().trim().to_string();
                if !title.is_empty() {
                    let next = Section {
                        heading: Some(title),
                        ..Section::default()
                    };
                    let done = std::mem::replace(&mut current, next);
                    if !done.text.trim().is_empty() {
                        sections.push(done);
                    }
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
                    current.text.push_str(&cells.join(" | "));
                    current.text.push('\n');
                }
            }
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::CodeBlock | TagEnd::Table) => {
                current.text.push_str("\n\n");
            }
            Event::Text(t) | Event::Code(t) => push(&mut current, &mut heading, &mut row, &t),
            Event::SoftBreak => push(&mut current, &mut heading, &mut row, " "),
            Event::HardBreak => push(&mut current, &mut heading, &mut row, "\n"),
            _ => {}
        }
    }
    if !current.text.trim().is_empty() {
        sections.push(current);
    }
    Extracted {
        format: Format::Markdown,
        pages: None,
        sections,
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
