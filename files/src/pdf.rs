//! PDF: one section per page, as pdf-extract lays the page's text out (a table's cells come out
//! in rows, separated by spaces as placed on the page).

use pdf_extract::OutputError;

use crate::{Extracted, FileError, Format, Section};

pub fn extract(bytes: &[u8]) -> Result<Extracted, FileError> {
    let pages = pdf_extract::extract_text_from_mem_by_pages(bytes).map_err(|e| match e {
        OutputError::PdfError(pdf_extract::Error::Decryption(_)) => FileError::Encrypted,
        other => FileError::Unreadable(other.to_string()),
    })?;
    let count = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    let sections = pages
        .into_iter()
        .zip(1..)
        .map(|(text, page)| Section {
            text,
            page: Some(page),
            heading: None,
        })
        .collect();
    Ok(Extracted {
        format: Format::Pdf,
        pages: Some(count),
        sections,
    })
}
