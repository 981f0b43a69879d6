/**
 * An intrusive list: the links live in the listed objects (`prev`, `next`, `list`), so putting a
 * connection on a list allocates nothing and hashes nothing, where a Set entry costs about 45 bytes
 * of table per member and a hash on every add and delete (docs/performance.md, "Memory per
 * connection"). An object is on at most one List at a time: its `list` says which.
 *
 * Iterating is safe while the loop body removes the object it stands on, or others: a removed object
 * keeps its `next` link, and objects that are no longer on this list are stepped over. Objects added
 * meanwhile are visited (appended at the end), as a Set's iterator does.
 *
 * @module
 */

/** What an object carries to be listed. */
export interface Listed<T extends Listed<T>> {
  prev: T | null;
  next: T | null;
  list: List<T> | null;
}

export class List<T extends Listed<T>> implements Iterable<T> {
  #head: T | null = null;
  #tail: T | null = null;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** Appends `item`, taking it off another list it is on; no-op when it is on this one already. */
  add(item: T): void {
    if (item.list === this) return;
    item.list?.delete(item);
    item.list = this;
    item.prev = this.#tail;
    item.next = null;
    if (this.#tail === null) this.#head = item;
    else this.#tail.next = item;
    this.#tail = item;
    this.#size++;
  }

  /** Removes `item`; false when it was not on this list. Its `next` stays, for a loop standing on it. */
  delete(item: T): boolean {
    if (item.list !== this) return false;
    const { prev, next } = item;
    if (prev === null) this.#head = next;
    else prev.next = next;
    if (next === null) this.#tail = prev;
    else next.prev = prev;
    item.list = null;
    item.prev = null;
    this.#size--;
    return true;
  }

  *[Symbol.iterator](): Iterator<T> {
    let item = this.#head;
    while (item !== null) {
      const next = item.next;
      yield item;
      item = next;
      while (item !== null && item.list !== this) item = item.next;
    }
  }
}
