// Click a header: sort its table's rows by that column (numbers numerically, empty cells last), click
// again to reverse. Cells may carry the exact value in data-sort when their text is formatted.
(function(){
function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
 var n=Number(v);return v===''?null:(isNaN(n)?v.toLowerCase():n);}
function cmp(a,b){if(a===null)return b===null?0:1;if(b===null)return -1;
 if(typeof a===typeof b)return a<b?-1:a>b?1:0;return typeof a==='number'?-1:1;}
document.querySelectorAll('table.sortable').forEach(function(table){
 var heads=table.tHead.rows[0].cells;
 Array.prototype.forEach.call(heads,function(th){th.tabIndex=0;th.title='click to sort';
  th.addEventListener('click',function(){
   var asc=th.getAttribute('aria-sort')!=='ascending',i=th.cellIndex,body=table.tBodies[0];
   Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
   th.setAttribute('aria-sort',asc?'ascending':'descending');
   var rows=Array.prototype.slice.call(body.rows);
   rows.sort(function(r,s){var a=key(r.cells[i]),b=key(s.cells[i]);
    if(a===null||b===null)return cmp(a,b);return asc?cmp(a,b):cmp(b,a);});
   rows.forEach(function(r){body.appendChild(r);});});});});
})();
