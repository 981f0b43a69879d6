/**
 * src/datapath/list.ts: the intrusive list the proxy keeps open connections on, and the sweep its
 * dials. What the data path relies on: order, size, idempotent add and delete, and iteration that
 * survives removals made by the loop body (the sweeps reset connections as they go).
 */
import { describe, expect, test } from "bun:test";
import { List, type Listed } from "../../src/datapath/list.ts";

class Item implements Listed<Item> {
  prev: Item | null = null;
  next: Item | null = null;
  list: List<Item> | null = null;
  constructor(readonly id: number) {}
}

const ids = (l: Iterable<Item>) => [...l].map((i) => i.id);

function listOf(n: number): { list: List<Item>; items: Item[] } {
  const list = new List<Item>();
  const items = Array.from({ length: n }, (_, i) => new Item(i));
  for (const i of items) list.add(i);
  return { list, items };
}

describe("List", () => {
  test("keeps insertion order and counts; add and delete are idempotent", () => {
    const { list, items } = listOf(4);
    list.add(items[1]!);
    expect(ids(list)).toEqual([0, 1, 2, 3]);
    expect(list.size).toBe(4);
    expect(list.delete(items[2]!)).toBe(true);
    expect(list.delete(items[2]!)).toBe(false);
    expect(items[2]!.list).toBeNull();
    expect(ids(list)).toEqual([0, 1, 3]);
    expect(list.delete(items[0]!)).toBe(true);
    expect(list.delete(items[3]!)).toBe(true);
    expect(ids(list)).toEqual([1]);
    expect(list.delete(items[1]!)).toBe(true);
    expect(list.size).toBe(0);
    expect(ids(list)).toEqual([]);
    list.add(items[3]!);
    expect(ids(list)).toEqual([3]);
  });

  test("an item added to a second list leaves the first", () => {
    const a = listOf(3);
    const b = new List<Item>();
    b.add(a.items[1]!);
    expect(ids(a.list)).toEqual([0, 2]);
    expect(a.list.size).toBe(2);
    expect(ids(b)).toEqual([1]);
  });

  test("iteration survives the body removing the current item, the next one, or all of them", () => {
    const { list, items } = listOf(6);
    const seen: number[] = [];
    for (const i of list) {
      seen.push(i.id);
      list.delete(i);
      if (i.id === 1) list.delete(items[2]!); // the next one, while standing on 1
      if (i.id === 3) {
        list.delete(items[4]!);
        list.delete(items[5]!);
      }
    }
    expect(seen).toEqual([0, 1, 3]);
    expect(list.size).toBe(0);
  });

  test("items added while iterating are visited, as a Set's iterator does", () => {
    const { list } = listOf(2);
    const seen: number[] = [];
    for (const i of list) {
      seen.push(i.id);
      if (i.id === 0) list.add(new Item(9));
    }
    expect(seen).toEqual([0, 1, 9]);
  });
});
