/**
 * A bounded FIFO for publishes made while disconnected. When full, pushing
 * evicts the oldest item and hands it back so that its caller can be told.
 */
export declare class OfflineQueue<T> {
    readonly capacity: number;
    private items;
    constructor(capacity: number);
    get size(): number;
    /**
     * Appends `item`; returns the items evicted to make room (the oldest
     * first). With capacity 0 the item itself is returned: nothing is queued.
     */
    push(item: T): T[];
    /** Removes and returns every item, oldest first. */
    drain(): T[];
    /** Removes and returns the items `predicate` selects, keeping the order of the rest. */
    removeWhere(predicate: (item: T) => boolean): T[];
}
