// Writes the Parquet test files of tests/records_test.cpp with three independent writers, DuckDB (C++; the
// nested, codec, dictionary and v2/DELTA files), parquetjs (JS; bare repeated fields, the legacy 2-level lists, many
// small pages) and hyparquet-writer (JS; v2 pages, DELTA_BYTE_ARRAY, several row groups), and beside each its
// expected rows as JSONL: the writer's own input, never read back through bamba.
// Usage (outside the repo, e.g. in /tmp/pq):  npm install @duckdb/node-api @dsnp/parquetjs hyparquet-writer
//   NODE_PATH=/tmp/pq/node_modules node make_files.mjs OUT_DIR
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
const require = createRequire(path.join(process.env.NODE_PATH || '.', 'x.js'));
const { DuckDBInstance } = require('@duckdb/node-api');
const parquet = require('@dsnp/parquetjs');
const { parquetWriteFile } = await import(require.resolve('hyparquet-writer'));

const out = process.argv[2] || '.';
// JSON with integers beyond 2^53 written exactly (BigInt → bare digits).
const dump = (v) => JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? `__big__${x}` : x)).replace(/"__big__(-?\d+)"/g, '$1');
const writeJsonl = (name, rows) => fs.writeFileSync(path.join(out, name), rows.map(dump).join('\n') + '\n');

const mmlu = [
  { question: 'What is 2 + 2?', subject: 'elementary_mathematics', choices: ['3', '4', '5', '22'], answer: 1n },
  { question: 'Which gas do plants absorb?', subject: 'biology', choices: ['O2', 'CO2', 'N2', 'He'], answer: 1n },
  { question: 'Capital of "France", with a comma, here?', subject: 'geography', choices: ['Paris', 'Lyon', 'Nice', 'Lille'], answer: 0n },
  { question: 'Ünïcödé — 日本語?', subject: 'biology', choices: ['α', 'β', 'γ', '😀'], answer: 3n },
  { question: 'Multi\nline\tquestion', subject: 'elementary_mathematics', choices: ['', ' ', 'x', 'y'], answer: 2n },
  { question: 'Largest int64?', subject: 'computer_science', choices: ['a', 'b', 'c', 'd'], answer: 9223372036854775807n },
  { question: 'Negative?', subject: 'computer_science', choices: ['a', 'b', 'c', 'd'], answer: -3n },
];
const arc = [
  { id: 'Mercury_7175875', question: 'An astronomer observes that a planet rotates faster...', choices: { text: ['Planetary density will decrease.', 'Planetary years will become longer.', 'Planetary days will become shorter.', 'Planetary gravity will become stronger.'], label: ['A', 'B', 'C', 'D'] }, answerKey: 'C' },
  { id: 'Mercury_SC_409171', question: 'A group of engineers wanted to know...', choices: { text: ['buoyancy', 'mass', 'speed'], label: ['1', '2', '3'] }, answerKey: '2' },
  { id: 'NYSEDREGENTS_2015_4_8', question: 'Which is a renewable resource?', choices: { text: [], label: [] }, answerKey: 'A' },
];
const nested = [
  { tags: ['a', null, 'c'], info: { a: 1, b: 'x' }, grid: [[1, 2], [], null, [null, 3]], people: [{ name: 'Ann', age: 30 }, null, { name: null, age: null }], attrs: { k1: 1, k2: null }, i8: -128, i16: -32768, u8: 255, u16: 65535, u32: 4294967295, u64: 18446744073709551615n, flag: true, f: 1.5, d: 3.141592653589793, s: 'plain' },
  { tags: null, info: null, grid: null, people: null, attrs: null, i8: null, i16: null, u8: null, u16: null, u32: null, u64: null, flag: null, f: null, d: null, s: null },
  { tags: [], info: { a: null, b: null }, grid: [], people: [], attrs: {}, i8: 127, i16: 32767, u8: 0, u16: 0, u32: 0, u64: 0n, flag: false, f: -0.25, d: -1e300, s: '' },
  { tags: [null], info: { a: -7, b: 'ünï' }, grid: [[null]], people: [{ name: 'Bob', age: -1 }], attrs: { only: 42 }, i8: 0, i16: 1, u8: 1, u16: 1, u32: 1, u64: 9007199254740993n, flag: true, f: 0, d: 0.1, s: 'tail' },
];
const nestedColumns = `{tags: 'VARCHAR[]', info: 'STRUCT(a INTEGER, b VARCHAR)', grid: 'INTEGER[][]',
  people: 'STRUCT(name VARCHAR, age INTEGER)[]', attrs: 'MAP(VARCHAR, INTEGER)', i8: 'TINYINT', i16: 'SMALLINT',
  u8: 'UTINYINT', u16: 'USMALLINT', u32: 'UINTEGER', u64: 'UBIGINT', flag: 'BOOLEAN', f: 'FLOAT', d: 'DOUBLE', s: 'VARCHAR'}`;

const db = await (await DuckDBInstance.create(':memory:')).connect();
const tmp = fs.mkdtempSync('/tmp/records-');
async function duck(file, rows, columns, options) {
  const src = path.join(tmp, file + '.json');
  fs.writeFileSync(src, '[' + rows.map(dump).join(',\n') + ']');
  await db.run(`COPY (SELECT * FROM read_json('${src}', format='array', columns=${columns})) TO '${path.join(out, file)}' (FORMAT parquet, ${options})`);
}

const mmluColumns = `{question: 'VARCHAR', subject: 'VARCHAR', choices: 'VARCHAR[]', answer: 'BIGINT'}`;
writeJsonl('mmlu.jsonl', mmlu);
for (const codec of ['uncompressed', 'snappy', 'gzip', 'zstd', 'lz4_raw', 'brotli'])
  await duck(`mmlu_${codec}.parquet`, mmlu, mmluColumns, `COMPRESSION ${codec}, ROW_GROUP_SIZE 3`);
writeJsonl('arc.jsonl', arc);
await duck('arc.parquet', arc, `{id: 'VARCHAR', question: 'VARCHAR', choices: 'STRUCT(text VARCHAR[], label VARCHAR[])', answerKey: 'VARCHAR'}`, 'COMPRESSION zstd');
writeJsonl('nested.jsonl', nested);
await duck('nested.parquet', nested, nestedColumns, 'COMPRESSION gzip');
await duck('nested_v2.parquet', nested, nestedColumns, 'COMPRESSION snappy, PARQUET_VERSION V2');

// Dictionary-encoded strings over many small pages (parquetjs: pageSize counts rows), v1 and v2 pages, with bare
// repeated fields (the oldest list form: a repeated primitive, a repeated group).
const legacySchema = new parquet.ParquetSchema({
  name: { type: 'UTF8', compression: 'SNAPPY' },
  score: { type: 'DOUBLE', optional: true },
  count: { type: 'INT64' },
  colours: { type: 'UTF8', repeated: true },
  stock: { repeated: true, fields: { quantity: { type: 'INT32', repeated: true }, warehouse: { type: 'UTF8' } } },
  // LogicalTypes.md's backward-compatibility rules: a repeated primitive (rule 1), a repeated group of several
  // fields (rule 2), a one-field group named <list>_tuple (rule 3) are each the element itself.
  two_level: { type: 'LIST', optional: true, fields: { array: { type: 'UTF8', repeated: true } } },
  multi: { type: 'LIST', fields: { item: { repeated: true, fields: { a: { type: 'INT32' }, b: { type: 'UTF8', optional: true } } } } },
  pairs: { type: 'LIST', fields: { pairs_tuple: { repeated: true, fields: { str: { type: 'UTF8' } } } } },
});
const legacy = [];
for (let i = 0; i < 14; ++i)
  legacy.push({
    name: ['apple', 'banana', 'cherry'][i % 3], score: i % 4 === 0 ? null : i / 4, count: BigInt(i * 1000),
    colours: i % 5 === 0 ? [] : ['red', 'green', 'blue'].slice(0, 1 + (i % 3)),
    stock: i % 6 === 0 ? [] : [{ quantity: [i, i + 1], warehouse: 'A' }, { quantity: [], warehouse: 'B' }],
    two_level: i % 7 === 3 ? null : ['x', 'y'].slice(0, i % 3),
    multi: [{ a: i, b: i % 2 ? 'odd' : null }],
    pairs: i % 4 === 1 ? [] : [{ str: 's' + i }, { str: 't' }],
  });
writeJsonl('legacy.jsonl', legacy);
for (const [file, v2] of [['legacy.parquet', false], ['legacy_v2.parquet', true]]) {
  const w = await parquet.ParquetWriter.openFile(legacySchema, path.join(out, file), { pageSize: 4, useDataPageV2: v2, rowGroupSize: 6 });
  for (const r of legacy) {
    const row = { ...r };
    if (row.score === null) delete row.score;
    if (row.two_level === null) delete row.two_level;
    else row.two_level = { array: row.two_level };
    row.multi = { item: row.multi };
    row.pairs = { pairs_tuple: row.pairs };
    await w.appendRow(row);
  }
  await w.close();
}

// Dictionary-encoded strings: v1 pages (PLAIN_DICTIONARY) and v2 pages (RLE_DICTIONARY).
const subjects = ['abstract_algebra', 'anatomy', 'astronomy', null];
const dict = [];
for (let i = 0; i < 150; ++i) dict.push({ subject: subjects[(i * 7) % 4], n: i % 5 });
writeJsonl('dict.jsonl', dict);
await duck('dict.parquet', dict, `{subject: 'VARCHAR', n: 'INTEGER'}`, 'COMPRESSION snappy');
await duck('dict_v2.parquet', dict, `{subject: 'VARCHAR', n: 'INTEGER'}`, 'COMPRESSION zstd, PARQUET_VERSION V2');

// hyparquet-writer: v2 data pages, row groups of 3, DELTA_BYTE_ARRAY strings, DELTA_BINARY_PACKED ints.
const flat = [];
for (let i = 0; i < 8; ++i)
  flat.push({ question: `Question ${i}?`, subject: i % 2 ? 'biology' : 'physics', id: `prefix_common_${1000 + i * 37}`, answer: BigInt(i % 4) - 1n, small: i * 1000 - 3500, half: [0.5, -2, 65504, 2 ** -14, 2 ** -24, 0, -0.125, 1024][i] });
writeJsonl('flat.jsonl', flat);
parquetWriteFile({
  filename: path.join(out, 'flat.parquet'), rowGroupSize: 3, pageSize: 40,
  columnData: [
    { name: 'question', data: flat.map((r) => r.question), type: 'STRING' },
    { name: 'subject', data: flat.map((r) => r.subject), type: 'STRING' },
    { name: 'id', data: flat.map((r) => r.id), type: 'STRING', encoding: 'DELTA_BYTE_ARRAY' },
    { name: 'answer', data: flat.map((r) => r.answer), type: 'INT64', encoding: 'DELTA_BINARY_PACKED' },
    { name: 'small', data: flat.map((r) => r.small), type: 'INT32', encoding: 'DELTA_BINARY_PACKED' },
    { name: 'half', data: flat.map((r) => r.half), type: 'FLOAT16' },
  ],
});

// DECIMAL stored as INT32, INT64 and FIXED_LEN_BYTE_ARRAY(16), and a BLOB (checked by hand in the test: JSON text
// has no bytes).
const decimals = [
  { d2: '12.34', d3: '-123456789012.345', d10: '1.5', raw: 'ab' },
  { d2: '-0.05', d3: '0.001', d10: '-2.25', raw: '' },
  { d2: null, d3: null, d10: '-12345678.25', raw: null },
];
writeJsonl('decimal.jsonl', decimals.map((r) => ({ d2: r.d2 && Number(r.d2), d3: r.d3 && Number(r.d3), d10: Number(r.d10) })));
const lit = (x, t) => (x === null ? `NULL::${t}` : `'${x}'::${t}`);
await db.run(`COPY (SELECT * FROM (VALUES ${decimals.map((r) => `(${lit(r.d2, 'DECIMAL(4,2)')}, ${lit(r.d3, 'DECIMAL(18,3)')}, ${lit(r.d10, 'DECIMAL(38,10)')}, ${lit(r.raw, 'BLOB')})`).join(', ')}) t(d2, d3, d10, raw)) TO '${path.join(out, 'decimal.parquet')}' (FORMAT parquet)`);
fs.rmSync(tmp, { recursive: true });
