//! The files LibreOffice made from one source document (scripts/fixtures/make_files.sh): the PDF
//! read page by page, the DOCX by its headings and table, the encrypted PDF refused as such.

use std::path::PathBuf;

use ragway_files::{extract, split, FileError, Format, Limits, TokenCounter};

const LIMITS: Limits = Limits { max_bytes: 32 << 20 };

fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/files")
        .join(name);
    Ok(std::fs::read(path)?)
}

#[test]
fn the_pdf_is_read_page_by_page_with_its_table() -> anyhow::Result<()> {
    let extracted = extract("handbook.pdf", &fixture("handbook.pdf")?, LIMITS)?;
    assert_eq!(extracted.format, Format::Pdf);
    assert_eq!(extracted.pages, Some(3));
    let page = |n: u32| -> String {
        extracted
            .sections
            .iter()
            .filter(|s| s.page == Some(n))
            .map(|s| s.text.clone())
            .collect()
    };
    assert!(page(1).contains("opens at seven in the morning"), "{}", page(1));
    assert!(page(2).contains("Flat white 3.20 3.80"), "{}", page(2));
    assert!(page(3).contains("descaled every twenty-one days"), "{}", page(3));
    assert!(!page(1).contains("descaled"));
    Ok(())
}

#[test]
fn the_docx_keeps_its_headings_and_table_rows() -> anyhow::Result<()> {
    let extracted = extract("handbook.docx", &fixture("handbook.docx")?, LIMITS)?;
    assert_eq!(extracted.format, Format::Docx);
    let under = |heading: &str| -> String {
        extracted
            .sections
            .iter()
            .filter(|s| s.heading.as_deref() == Some(heading))
            .map(|s| s.text.clone())
            .collect()
    };
    assert!(
        under("Prices").contains("Flat white | 3.20 | 3.80"),
        "{:?}",
        extracted.sections
    );
    assert!(
        under("Espresso machine care").contains("citric acid"),
        "{:?}",
        extracted.sections
    );
    assert!(!under("Opening hours").contains("citric acid"));
    let pieces = split(&extracted, &TokenCounter::Estimate, 64, 0);
    assert!(pieces
        .iter()
        .any(|p| p.heading.as_deref() == Some("Prices") && p.text.starts_with("Prices\n")));
    Ok(())
}

#[test]
fn an_encrypted_pdf_is_refused_as_encrypted() -> anyhow::Result<()> {
    let refused = extract("encrypted.pdf", &fixture("encrypted.pdf")?, LIMITS);
    assert_eq!(refused, Err(FileError::Encrypted));
    Ok(())
}
