//! HTML: the document tree as a browser builds it (html5ever), walked in order. `h1`–`h6` start a
//! section under their text; block elements end a line; table rows become cells separated by
//! ` | `; scripts, styles and other non-content elements are skipped.

use scraper::{ElementRef, Html, Node};

use crate::{Extracted, Format, Sections};

const SKIPPED: [&str; 8] = [
    "script", "style", "noscript", "template", "head", "svg", "iframe", "button",
];
const BLOCKS: [&str; 22] = [
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "nav",
    "li",
    "ul",
    "ol",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
    "table",
    "form",
    "address",
];

pub fn extract(text: &str) -> Extracted {
    let document = Html::parse_document(text);
    let mut walker = Walker::default();
    walker.element(document.root_element());
    Extracted {
        format: Format::Html,
        pages: None,
        sections: walker.sections.finish(),
    }
}

#[derive(Default)]
struct Walker {
    sections: Sections,
}

impl Walker {
    fn element(&mut self, element: ElementRef<'_>) {
        let name = element.value().name();
        if SKIPPED.contains(&name) {
            return;
        }
        if let Some(_level) = name.strip_prefix('h').and_then(|l| l.parse::<u8>().ok()) {
            let heading = inline_text(element);
            if !heading.is_empty() {
                self.sections.heading(heading);
            }
            return;
        }
        match name {
            "tr" => {
                let cells: Vec<String> = element
                    .children()
                    .filter_map(ElementRef::wrap)
                    .filter(|c| matches!(c.value().name(), "td" | "th"))
                    .map(inline_text)
                    .collect();
                if cells.iter().any(|c| !c.is_empty()) {
                    self.line(&cells.join(" | "));
                }
                return;
            }
            "br" => {
                self.sections.text().push('\n');
                return;
            }
            _ => {}
        }
        for child in element.children() {
            match child.value() {
                Node::Text(text) => self.sections.text().push_str(&collapse(text)),
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.element(child);
                    }
                }
                _ => {}
            }
        }
        if BLOCKS.contains(&name) {
            self.sections.text().push_str("\n\n");
        }
    }

    fn line(&mut self, line: &str) {
        self.sections.text().push_str(line);
        self.sections.text().push('\n');
    }
}

/// An element's text on one line, blanks collapsed.
fn inline_text(element: ElementRef<'_>) -> String {
    element
        .text()
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs of whitespace (line breaks in the source included) as one space, as a browser shows them.
fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending = true;
            continue;
        }
        if pending {
            out.push(' ');
            pending = false;
        }
        out.push(c);
    }
    if pending {
        out.push(' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_sections_tables_and_no_scripts() {
        let page = r"<!doctype html><html><head><title>t</title><style>p{}</style></head><body>
            <nav>Home</nav>
            <h1>Espresso</h1><p>Brewed at <b>nine</b>
               bars.</p><script>alert(1)</script>
            <h2>Prices</h2><table><tr><th>Drink</th><th>Price</th></tr><tr><td>Espresso</td><td>2.50</td></tr></table>
            </body></html>";
        let sections: Vec<(Option<String>, String)> = extract(page)
            .sections
            .into_iter()
            .map(|s| (s.heading, crate::tidy(&s.text)))
            .collect();
        assert_eq!(
            sections,
            vec![
                (None, "Home".to_string()),
                (Some("Espresso".into()), "Brewed at nine bars.".into()),
                (Some("Prices".into()), "Drink | Price\nEspresso | 2.50".into()),
            ]
        );
    }
}
