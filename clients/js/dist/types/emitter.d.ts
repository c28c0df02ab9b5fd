/** A small typed event emitter; a throwing handler never breaks the client. */
type Handler = (...args: any[]) => void;
export declare function reportHandlerError(error: unknown): void;
export declare class Emitter<Events extends {
    [K in keyof Events]: Handler;
}> {
    private handlers;
    /** Adds `handler`; returns a function that removes it. */
    on<K extends keyof Events>(name: K, handler: Events[K]): () => void;
    off<K extends keyof Events>(name: K, handler: Events[K]): void;
    emit<K extends keyof Events>(name: K, ...args: Parameters<Events[K]>): void;
    clear(): void;
}
export {};
