/**
 * A bounded FIFO for publishes made while disconnected. When full, pushing
 * evicts the oldest item and hands it back so that its caller can be told.
 */
export class OfflineQueue<T> {
  private items: T[] = [];

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0) {
      throw new RangeError(`offline queue capacity must be a non-negative integer, got ${capacity}`);
    }
  }

  get size(): number {
    return this.items.length;
  }

  /**
   * Appends `item`; returns the items evicted to make room (the oldest
   * first). With capacity 0 the item itself is returned: nothing is queued.
   */
  push(item: T): T[] {
    if (this.capacity === 0) return [item];
    this.items.push(item);
    const over = this.items.length - this.capacity;
    return over > 0 ? this.items.splice(0, over) : [];
  }

  /** Removes and returns every item, oldest first. */
  drain(): T[] {
    const items = this.items;
    this.items = [];
    return items;
  }

  /** Removes and returns the items `predicate` selects, keeping the order of the rest. */
  removeWhere(predicate: (item: T) => boolean): T[] {
    const removed: T[] = [];
    this.items = this.items.filter((item) => {
      if (predicate(item)) {
        removed.push(item);
        return false;
      }
      return true;
    });
    return removed;
  }
}
