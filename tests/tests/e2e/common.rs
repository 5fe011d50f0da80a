//! A small corpus with one clear answer per question.

// Each test module uses part of this module.
#![allow(dead_code)]

use serde_json::{json, Value};

pub fn corpus() -> Value {
    json!({"documents": [
        {"id": "volcanoes", "text": "Volcanoes form where magma from the mantle reaches the surface. Mount Etna in Sicily is one of the most active volcanoes in Europe, erupting lava and ash several times a year.", "metadata": {"topic": "geology", "year": 2021}},
        {"id": "photosynthesis", "text": "Photosynthesis is how green plants turn sunlight, water and carbon dioxide into glucose and oxygen. It happens in the chloroplasts, which hold the green pigment chlorophyll.", "metadata": {"topic": "biology", "year": 2022}},
        {"id": "espresso", "text": "An espresso is brewed by forcing hot water at about nine bars of pressure through finely ground coffee. A good shot takes twenty-five to thirty seconds and has a layer of crema.", "metadata": {"topic": "food", "year": 2023}},
        {"id": "tcp", "text": "TCP provides reliable, ordered delivery of bytes between applications. It uses a three-way handshake of SYN, SYN-ACK and ACK to open a connection, and retransmits lost segments.", "metadata": {"topic": "networking", "year": 2021}},
        {"id": "marathon", "text": "The marathon is a long-distance running race of 42.195 kilometres. The distance commemorates the legend of a Greek messenger who ran from Marathon to Athens.", "metadata": {"topic": "sport", "year": 2020}},
        {"id": "honeybees", "text": "Honeybees communicate the direction and distance of flowers to their hive mates with the waggle dance. A colony can hold tens of thousands of worker bees and one queen.", "metadata": {"topic": "biology", "year": 2023}}
    ]})
}

/// (question, the document that answers it)
pub const QUESTIONS: [(&str, &str); 6] = [
    ("Which volcano in Sicily erupts often?", "volcanoes"),
    ("How do plants make oxygen from sunlight?", "photosynthesis"),
    ("What pressure is used to brew coffee shots?", "espresso"),
    (
        "How is a reliable network connection opened with a handshake?",
        "tcp",
    ),
    ("How long is the running race from the Greek legend?", "marathon"),
    ("How do bees tell each other where flowers are?", "honeybees"),
];

pub fn doc_ids(body: &Value, list: &str) -> Vec<String> {
    body[list]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["doc_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The status of the job a `202` names once it is no longer queued or running (at most `limit`).
pub async fn job_finished(
    server: &ragway_e2e::Server,
    accepted: &ragway_e2e::Reply,
    limit: std::time::Duration,
) -> anyhow::Result<Value> {
    let url = accepted.body["status_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let started = std::time::Instant::now();
    loop {
        let status = server.get(&url).await?.body;
        if !matches!(status["state"].as_str(), Some("queued" | "running")) {
            return Ok(status);
        }
        anyhow::ensure!(started.elapsed() < limit, "job still {status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
