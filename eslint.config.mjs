// Lint: typescript-eslint's recommended rules plus type-aware promise rules (a promise nobody awaits or handles is a
// lost error). `npm run lint` runs this, the layering check and Prettier's check; CI runs it before the tests.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "web/vendor/**", "bench/results/**", "**/*.js", "**/*.mjs", "**/*.cjs", "**/*.d.ts"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // node:test's test()/describe() return promises that the runner itself tracks.
      "@typescript-eslint/no-floating-promises": [
        "error",
        {
          allowForKnownSafeCalls: [
            { from: "package", package: "node:test", name: ["test", "it", "describe", "suite", "before", "after", "beforeEach", "afterEach"] },
          ],
        },
      ],
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/await-thenable": "error",
      // A variable a closure reads before its one assignment (a callback wired before the object exists) stays `let`.
      "prefer-const": ["error", { ignoreReadBeforeAssign: true }],
      // Terminal escapes are stripped and matched on purpose (CLI colour); literal YAML/table spacing is matched exactly.
      "no-control-regex": "off",
      "no-regex-spaces": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
    },
  },
  {
    // Tests and benchmarks read the fields they assert on from JSON responses and child output.
    files: ["test/**/*.ts", "bench/**/*.ts"],
    rules: { "@typescript-eslint/no-explicit-any": "off" },
  },
);
