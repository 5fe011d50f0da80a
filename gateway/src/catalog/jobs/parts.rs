//! An import's documents as stored in parts of [`PART_DOCUMENTS`]: each document as JSON (its
//! vector left out) followed by its vector as little-endian `f32`s — written once, read back
//! without parsing a million numbers again.

use ragway_openapi::DocumentInput;

/// Documents per part (the last part may hold fewer). A part is read whole when its job reaches it.
pub const PART_DOCUMENTS: usize = 1024;

pub fn encode(documents: &[DocumentInput]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for doc in documents {
        let vector = doc.vector.as_deref().unwrap_or_default();
        let json = serde_json::to_vec(&DocumentInput {
            vector: None,
            chunks: doc.chunks.clone(),
            metadata: doc.metadata.clone(),
            id: doc.id.clone(),
            text: doc.text.clone(),
        })
        .map_err(|e| e.to_string())?;
        out.extend_from_slice(&length(json.len())?.to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&length(vector.len())?.to_le_bytes());
        vector
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    Ok(out)
}

fn length(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} is too long for a part"))
}

pub fn decode(mut bytes: &[u8]) -> Result<Vec<DocumentInput>, String> {
    let mut documents = Vec::new();
    while !bytes.is_empty() {
        let json = take(&mut bytes, 1)?;
        let mut doc: DocumentInput = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let vector = take(&mut bytes, 4)?;
        if !vector.is_empty() {
            doc.vector = Some(
                vector
                    .chunks_exact(4)
                    .map(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]]))
                    .collect(),
            );
        }
        documents.push(doc);
    }
    Ok(documents)
}

/// The next length-prefixed field, of `unit`-byte items.
fn take<'a>(bytes: &mut &'a [u8], unit: usize) -> Result<&'a [u8], String> {
    let cut = || "a truncated part".to_string();
    let (head, rest) = bytes.split_first_chunk::<4>().ok_or_else(cut)?;
    let len = u32::from_le_bytes(*head) as usize * unit;
    let field = rest.get(..len).ok_or_else(cut)?;
    *bytes = &rest[len..];
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_reads_back_as_written() -> Result<(), String> {
        let doc = |id: &str, vector: Option<Vec<f32>>| DocumentInput {
            id: id.into(),
            text: format!("text of {id}"),
            metadata: serde_json::json!({"k": id}).as_object().cloned(),
            chunks: None,
            vector,
        };
        let written = vec![
            doc("a", Some(vec![0.5, -1.25, f32::MIN_POSITIVE])),
            doc("b", None),
            doc("c", Some(vec![3.0])),
        ];
        let read = decode(&encode(&written)?)?;
        assert_eq!(read.len(), 3);
        for (w, r) in written.iter().zip(&read) {
            assert_eq!(
                (&w.id, &w.text, &w.metadata, &w.vector),
                (&r.id, &r.text, &r.metadata, &r.vector)
            );
        }
        let bytes = encode(&written)?;
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        Ok(())
    }
}
