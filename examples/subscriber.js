// Prints the transcripts and utterances of one session of the emotion stream, checks every
// body against the protocol's JSON Schema and each topic's topic_seq for loss, and stops at
// the session's end.
// In examples/: npm install, then node subscriber.js [ENDPOINT]
const fs = require("fs");
const path = require("path");
const zmq = require("zeromq"); // zeromq 6
const Ajv2020 = require("ajv/dist/2020"); // the schema is JSON Schema 2020-12

const endpoint = process.argv[2] || "tcp://127.0.0.1:5555";
const schemaFile = path.join(__dirname, "..", "realtime", "schema", "emotion-stream-v1.json");
const ajv = new Ajv2020();
const valid = ajv.compile(JSON.parse(fs.readFileSync(schemaFile, "utf8")));

async function main() {
  const sock = new zmq.Subscriber();
  sock.connect(endpoint);
  sock.subscribe("emotion.utterance", "status", "transcript"); // whole topics; "" is everything
  const last = {}; // topic -> the last topic_seq seen
  for await (const [topicFrame, bodyFrame] of sock) {
    const topic = topicFrame.toString();
    const msg = JSON.parse(bodyFrame.toString());
    if (!valid(msg)) console.log(`invalid ${topic} body: ${ajv.errorsText(valid.errors)}`);
    if (topic in last && msg.topic_seq !== last[topic] + 1) {
      console.log(`missed ${msg.topic_seq - last[topic] - 1} ${topic} message(s)`);
    }
    last[topic] = msg.topic_seq;
    if (msg.type === "utterance") {
      const top = Object.keys(msg.labels).reduce((a, b) => (msg.labels[b] > msg.labels[a] ? b : a));
      console.log(`${msg.start.toFixed(1)}s ${top} ${msg.labels[top].toFixed(2)} "${msg.text}"`);
    } else if (msg.type === "transcript" && msg.final) {
      console.log(`${msg.start.toFixed(1)}-${msg.end.toFixed(1)}s heard "${msg.text}"`);
    } else if (msg.type === "status" && msg.state === "finished") {
      break; // the session's last message, also after "failed"
    }
  }
  sock.close();
}

main();
