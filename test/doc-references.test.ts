// Cross-references to docs/protocol.md: every "§N" or "section N" in the docs,
// the sources and the tests must point at a section that exists and is about
// what the sentence around it says, so renumbering a section cannot go unseen.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '..');
const PROTOCOL = 'docs/protocol.md';

interface Section {
  title: string;
  slug: string;
  /** Lower-case words a reference's sentence may use to name this section. */
  words: Set<string>;
}

// Words that say nothing about which section is meant.
const VAGUE = new Set(['decision', 'decisions', 'with', 'without', 'when', 'what', 'that', 'this', 'from', 'same', 'numbers', 'where', 'every']);

const wordsOf = (text: string): string[] => text.toLowerCase().match(/[a-z][a-z_]*/g) ?? [];

/** The numbered `## N. Title` sections, each with the words of its title, sub-headings and bold phrases. */
function sections(): Map<number, Section> {
  const found = new Map<number, Section>();
  let current: Section | undefined;
  for (const line of readFileSync(join(root, PROTOCOL), 'utf8').split('\n')) {
    const heading = /^## (\d+)\. (.+)$/.exec(line);
    if (heading) {
      const title = heading[2]!;
      const slug = `${heading[1]}-${title.toLowerCase().replace(/[^a-z0-9_ -]/g, '').replace(/ /g, '-')}`;
      current = { title, slug, words: new Set() };
      found.set(Number(heading[1]), current);
      for (const word of wordsOf(title)) current.words.add(word);
      continue;
    }
    if (/^## /.test(line)) current = undefined;
    if (!current) continue;
    const texts = [/^###+ (.+)$/.exec(line)?.[1] ?? '', ...[...line.matchAll(/\*\*(.+?)\*\*/g)].map((m) => m[1]!)];
    for (const word of texts.flatMap(wordsOf)) current.words.add(word);
  }
  for (const section of found.values()) for (const word of section.words) if (word.length < 4 || VAGUE.has(word)) section.words.delete(word);
  return found;
}

/** "errors" names "Errors", "deliver" names "Delivery"; ABOUT_ME-style names must match whole. */
function names(word: string, keyword: string): boolean {
  if (keyword.includes('_') || word.includes('_')) return word === keyword;
  const need = Math.min(5, keyword.length, word.length);
  if (word.length < 4) return false;
  let common = 0;
  while (common < word.length && common < keyword.length && word[common] === keyword[common]) common++;
  return common >= need;
}

function files(dir: string, keep: (path: string) => boolean): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(root, dir))) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const path = join(dir, name);
    if (statSync(join(root, path)).isDirectory()) out.push(...files(path, keep));
    else if (keep(path)) out.push(path);
  }
  return out;
}

interface Reference {
  where: string;
  section: number;
  context: string;
}

/**
 * In docs/protocol.md, "section N" and "§N"; in other Markdown, "protocol.md §N";
 * in TypeScript, any "§N" or "section N" except next to an RFC.
 */
function references(): Reference[] {
  const found: Reference[] = [];
  const markdown = ['README.md', ...files('docs', (p) => p.endsWith('.md'))];
  const code = ['src', 'test', 'bench', 'examples', 'adapters'].flatMap((dir) => files(dir, (p) => p.endsWith('.ts')));
  for (const path of [...markdown, ...code]) {
    const lines = readFileSync(join(root, path), 'utf8').split('\n');
    lines.forEach((line, i) => {
      let pattern: RegExp;
      if (path === PROTOCOL) pattern = /(?:§|\bsection )(\d+)/g;
      else if (path.endsWith('.md')) pattern = /protocol\.md (?:§|section )(\d+)/g;
      else if (/\bRFC\b/.test(line)) return;
      else pattern = /(?:§|\bsections? )(\d+)/g;
      // Markdown wraps sentences, so the line before counts; code comments name their topic on the line.
      const context = path.endsWith('.md') ? `${lines[i - 1] ?? ''} ${line}` : line;
      for (const m of line.matchAll(pattern)) found.push({ where: `${relative(root, join(root, path))}:${i + 1}`, section: Number(m[1]), context });
    });
  }
  return found;
}

describe('references to docs/protocol.md', () => {
  const all = sections();

  it('finds the numbered sections and some references', () => {
    expect(all.size).toBeGreaterThanOrEqual(10);
    expect(references().length).toBeGreaterThan(10);
  });

  it('every "§N" points at a section about what its sentence says', () => {
    const wrong: string[] = [];
    for (const ref of references()) {
      const section = all.get(ref.section);
      if (!section) {
        wrong.push(`${ref.where}: §${ref.section} does not exist`);
        continue;
      }
      const words = wordsOf(ref.context);
      if (![...section.words].some((keyword) => words.some((word) => names(word, keyword)))) {
        wrong.push(`${ref.where}: §${ref.section} is "${section.title}", which nothing in "${ref.context.trim()}" names`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('links to a section use its current anchor', () => {
    const slugs = new Set([...all.values()].map((s) => s.slug));
    const wrong: string[] = [];
    for (const path of ['README.md', ...files('docs', (p) => p.endsWith('.md'))]) {
      for (const m of readFileSync(join(root, path), 'utf8').matchAll(/protocol\.md#([\w-]+)/g)) {
        if (/^\d/.test(m[1]!) && !slugs.has(m[1]!)) wrong.push(`${path}: #${m[1]}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('name the file as it is spelled: docs/protocol.md', () => {
    const wrong = ['README.md', ...files('docs', (p) => p.endsWith('.md')), ...['src', 'test', 'bench', 'examples', 'adapters'].flatMap((dir) => files(dir, (p) => p.endsWith('.ts')))]
      .filter((path) => !path.endsWith('doc-references.test.ts'))
      .filter((path) => readFileSync(join(root, path), 'utf8').includes('PROTOCOL.md'));
    expect(wrong).toEqual([]);
  });
});
