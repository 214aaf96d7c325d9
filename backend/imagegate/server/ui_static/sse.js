// Server-Sent Events read from a fetch() body (an EventSource cannot send the API key as a
// header). The parsing rules are WHATWG HTML §9.2.6 "Interpreting an event stream": lines end
// with CRLF, LF or CR; a blank line dispatches; ":" starts a comment; "field: value" with one
// optional space after the colon; data lines are joined with LF; "id" sets the last event id.

export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.data = [];
    this.event = '';
    this.lastId = null;
  }

  /** Feed decoded text; complete events are dispatched to onEvent({event, data, id}). */
  feed(text) {
    this.buffer += text;
    for (;;) {
      const match = /\r\n|\n|\r/.exec(this.buffer);
      if (!match) return;
      if (match[0] === '\r' && match.index === this.buffer.length - 1) return; // maybe CRLF
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.onEvent({event: this.event || 'message', data: this.data.join('\n'), id: this.lastId});
      }
      this.data = [];
      this.event = '';
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id' && !value.includes('\0')) this.lastId = value;
  }
}
