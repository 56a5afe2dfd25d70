// A FIFO over a circular array, for replay buffers: appending and evicting
// never move the other entries (Array#shift copies the array once it is large).
// The capacity is a power of two, so positions wrap with a mask.

export class Ring<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  length = 0;

  push(item: T): void {
    if (this.length === this.items.length) this.grow();
    this.items[(this.head + this.length) & (this.items.length - 1)] = item;
    this.length++;
  }

  /** Removes and returns the oldest entry; the ring must not be empty. */
  shift(): T {
    const item = this.items[this.head]!;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) & (this.items.length - 1);
    this.length--;
    return item;
  }

  /** The entry `index` places after the oldest. */
  at(index: number): T {
    return this.items[(this.head + index) & (this.items.length - 1)]!;
  }

  set(index: number, item: T): void {
    this.items[(this.head + index) & (this.items.length - 1)] = item;
  }

  /** Entries from `start` (default: the oldest) to the newest, as a new array. */
  slice(start = 0): T[] {
    const out: T[] = [];
    for (let i = Math.max(0, start); i < this.length; i++) out.push(this.at(i));
    return out;
  }

  private grow(): void {
    const items = new Array<T | undefined>(Math.max(8, this.items.length * 2));
    for (let i = 0; i < this.length; i++) items[i] = this.at(i);
    this.items = items;
    this.head = 0;
  }
}
