// Time as data: a min-heap of deadlines. Entries are lazy — a heartbeat only
// moves a connection's deadline; the stale entry is re-filed when it surfaces,
// so the hot path never touches the heap.

export interface TimerEntry<T> {
  at: number;
  ref: T;
}

export class TimerHeap<T> {
  private readonly items: TimerEntry<T>[] = [];

  /** The earliest entry itself, so a caller can tell a stale one from a live one. */
  peekEntry(): TimerEntry<T> | undefined {
    return this.items[0];
  }

  push(at: number, ref: T): void {
    const items = this.items;
    items.push({ at, ref });
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent]!.at <= at) break;
      [items[i], items[parent]] = [items[parent]!, items[i]!];
      i = parent;
    }
  }

  /** Removes and returns the earliest entry due at or before `now`. */
  popDue(now: number): TimerEntry<T> | undefined {
    const items = this.items;
    if (items.length === 0 || items[0]!.at > now) return undefined;
    const top = items[0]!;
    const last = items.pop()!;
    if (items.length > 0) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < items.length && items[left]!.at < items[smallest]!.at) smallest = left;
        if (right < items.length && items[right]!.at < items[smallest]!.at) smallest = right;
        if (smallest === i) break;
        [items[i], items[smallest]] = [items[smallest]!, items[i]!];
        i = smallest;
      }
    }
    return top;
  }
}
