// The page's event bus: one EventTarget that the modules of the chat page talk through, so that no module needs
// to import another one to tell it something (and network code never imports the UI). An event is a name and a
// detail object; docs/web-client.md lists every event, who emits it and who listens.

const target = new EventTarget();

/** Announce `type` with `detail` to every listener (synchronously, in the order they subscribed). */
export function emit(type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}

/** Listen to `type`; `fn` gets the detail. Returns a function that stops listening. */
export function on(type, fn) {
  const h = (ev) => fn(ev.detail);
  target.addEventListener(type, h);
  return () => target.removeEventListener(type, h);
}
