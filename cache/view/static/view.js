// layerhoard's cache view: sort a table by clicking its header, filter the images by text.
// The page is whole without this script; it only reorders and hides rows the server rendered.
"use strict";

function cellKey(row, column) {
  const cell = row.cells[column];
  if (!cell) return "";
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  const number = Number(raw);
  return raw !== "" && !Number.isNaN(number) ? number : raw.toLowerCase();
}

function sortBy(table, header) {
  const column = header.cellIndex;
  const up = !header.classList.contains("sorted-up");
  for (const other of header.parentNode.children) other.classList.remove("sorted-up", "sorted-down");
  header.classList.add(up ? "sorted-up" : "sorted-down");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).filter((row) => !row.classList.contains("total"));
  rows.sort((a, b) => {
    const x = cellKey(a, column), y = cellKey(b, column);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return up ? order : -order;
  });
  const totals = Array.from(body.rows).filter((row) => row.classList.contains("total"));
  for (const row of rows.concat(totals)) body.appendChild(row);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    for (const header of table.tHead.rows[0].cells) header.addEventListener("click", () => sortBy(table, header));
  }
  const filter = document.getElementById("filter");
  const images = document.getElementById("image-table");
  if (filter && images) {
    filter.addEventListener("input", () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      for (const row of images.tBodies[0].rows) {
        const text = row.textContent.toLowerCase();
        row.classList.toggle("hidden", !words.every((word) => text.includes(word)));
      }
    });
  }
  document.body.dataset.ready = "true";  // the browser test waits for the script to have run
});
