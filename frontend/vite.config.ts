import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The build goes into the Python package (webapp/static), so `pip install` ships it.
export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "../webapp/static",
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
  },
  server: { proxy: { "/api": { target: "http://127.0.0.1:8000", ws: true } } },
  test: { globals: true, environment: "node" },
});
