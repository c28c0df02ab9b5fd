/** A small typed event emitter; a throwing handler never breaks the client. */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Handler = (...args: any[]) => void;

export function reportHandlerError(error: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === "function") g.reportError(error);
  else console.error("herald: an event handler threw", error);
}

export class Emitter<Events extends { [K in keyof Events]: Handler }> {
  private handlers = new Map<keyof Events, Set<Handler>>();

  /** Adds `handler`; returns a function that removes it. */
  on<K extends keyof Events>(name: K, handler: Events[K]): () => void {
    let set = this.handlers.get(name);
    if (!set) {
      set = new Set();
      this.handlers.set(name, set);
    }
    set.add(handler);
    return () => this.off(name, handler);
  }

  off<K extends keyof Events>(name: K, handler: Events[K]): void {
    this.handlers.get(name)?.delete(handler);
  }

  emit<K extends keyof Events>(name: K, ...args: Parameters<Events[K]>): void {
    const set = this.handlers.get(name);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (e) {
        reportHandlerError(e);
      }
    }
  }

  clear(): void {
    this.handlers.clear();
  }
}
