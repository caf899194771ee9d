#!/usr/bin/env node
'use strict';
// Thin launcher: the CLI is TypeScript compiled into dist/ by `make setup` (or `npm run build`).
const path = require('node:path');
const fs = require('node:fs');

const entry = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
if (!fs.existsSync(entry)) {
  process.stderr.write('tcpaudit: not built yet; run "make setup" in the repository first\n');
  process.exit(1);
}
require(entry)
  .main(process.argv.slice(2))
  .then((code) => process.exit(code));
