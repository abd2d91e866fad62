// Raw HTTP/1.1 over a socket, for requests fetch will not send (forged Host, broken framing).
import { connect } from "node:net";

/** One raw request on a fresh socket; resolves with what the server sent before it closed (or after `waitMs`). */
export function rawRequest(port: number, text: string | Buffer, waitMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString("latin1"));
    };
    const timer = setTimeout(done, waitMs);
    socket.on("data", (c) => chunks.push(c));
    socket.on("end", done);
    socket.on("close", done);
    socket.on("error", (e) => (chunks.length ? done() : reject(e)));
    socket.write(text);
  });
}

/** Status code and JSON body of a raw HTTP/1.1 answer. */
export function parseRaw(answer: string): { status: number; headers: string; body: any } {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(answer);
  const at = answer.indexOf("\r\n\r\n");
  const head = at < 0 ? answer : answer.slice(0, at);
  let body = at < 0 ? "" : answer.slice(at + 4);
  if (/transfer-encoding: chunked/i.test(head)) {
    let out = "";
    for (let rest = body; ;) {
      const nl = rest.indexOf("\r\n");
      const size = parseInt(rest.slice(0, nl), 16);
      if (!size) break;
      out += rest.slice(nl + 2, nl + 2 + size);
      rest = rest.slice(nl + 2 + size + 2);
    }
    body = out;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  return { status: m ? Number(m[1]) : 0, headers: head, body: parsed };
}
