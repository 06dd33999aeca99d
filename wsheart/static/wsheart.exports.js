// What turns the classic script wsheart.js into an ES module: appended to it
// by wsheart/pages.py (for /wsheart.mjs) and by js/build.mjs (for the npm
// package), so both are the same bytes.
export { WsHeart };
export default WsHeart;
