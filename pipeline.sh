#!/usr/bin/env bash
# pipeq's pipeline: read QC/trimming (fastp) -> alignment (minimap2 -ax sr) -> sort, index,
# stats (samtools) -> variant calling (bcftools mpileup | bcftools call -mv) -> report.
#
#   pipeline.sh --reference REF.fa[.gz] --reads R1.fq[.gz] [--reads R2.fq[.gz]] --outdir DIR
#               [--sample NAME] [--threads N]
#
# Contract (docs/pipeline.md, docs/architecture.md):
#   stdout: only progress lines, exactly `PROGRESS <pct 0-100> <stage> [text]`, one per stage
#           start, and `PROGRESS 100 done` last. Tool output goes to stderr.
#   exit:   0 ok, 2 usage, 3 missing tool, 4 bad input (or unusable --outdir),
#           5 a stage's tool failed, 130/143 interrupted/terminated.
#           On failure the last stderr line is `pipeline.sh: error: <one-line reason>`.
#   writes: only inside --outdir (scratch in DIR/work, removed on success).
set -Eeuo pipefail
umask 022
export LC_ALL=C

readonly PROG=pipeline.sh
# the report's helpers (pipeline_report/) and the pinned plotly for fastp.html live beside
# this script: in a checkout (scripts/plotly.sh puts plotly in build/vendor/) and in the
# worker image (/opt/pipeq)
HERE=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")" && pwd -P)
readonly EX_USAGE=2 EX_TOOL=3 EX_INPUT=4 EX_STAGE=5

usage() {
  cat <<'EOF'
usage: pipeline.sh --reference REF.fa[.gz] --reads R1.fq[.gz] [--reads R2.fq[.gz]] --outdir DIR
                   [--sample NAME] [--threads N]
       pipeline.sh --check-only --reference REF.fa[.gz] --reads R1.fq[.gz] [--reads R2.fq[.gz]]

Variant calling on short reads: fastp -> minimap2 -ax sr -> samtools -> bcftools.
Outputs in DIR: <sample>.bam(.bai), <sample>.vcf.gz(.tbi), fastp.json, fastp.html,
report.json, report.html with plots (and plots.json, plotly.min.js, multiqc_config.yaml,
<sample>.flagstat.txt, .stats.txt, .coverage.tsv, .idxstats.tsv, .bcftools_stats.txt).
Progress on stdout: "PROGRESS <pct> <stage> [text]". Exit codes: 0 ok, 2 usage,
3 missing tool, 4 bad input, 5 a stage failed. --check-only checks the tools and the
inputs, then exits (0 when they are fine), running and writing nothing.
EOF
}

die() { # die CODE MESSAGE...
  local code=$1; shift
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit "$code"
}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

STAGE=init STAGE_TEXT=""
declare -a STAGE_NAMES=() STAGE_SECONDS=()
STAGE_T0=0
now_ms() { local t; t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
progress() { # progress PCT STAGE [TEXT...]
  local pct=$1 stage=$2; shift 2
  end_stage
  STAGE=$stage STAGE_TEXT=$*
  STAGE_T0=$(now_ms)
  if [ $# -gt 0 ]; then echo "PROGRESS $pct $stage $*"; else echo "PROGRESS $pct $stage"; fi
}
end_stage() {
  if [ "$STAGE_T0" -ne 0 ]; then
    STAGE_NAMES+=("$STAGE")
    STAGE_SECONDS+=("$(( $(now_ms) - STAGE_T0 ))")
  fi
  STAGE_T0=0
}

on_err() { # called by the ERR trap: a command failed under set -e
  local rc=$1
  trap - ERR
  die "$EX_STAGE" "stage '$STAGE'${STAGE_TEXT:+ ($STAGE_TEXT)} failed with exit $rc; the tool's messages are above"
}
trap 'on_err $?' ERR
trap 'trap - ERR; log "interrupted"; exit 130' INT
trap 'trap - ERR; log "terminated"; exit 143' TERM

# ---- arguments ---------------------------------------------------------------------------
REFERENCE="" OUTDIR="" SAMPLE="" THREADS="" CHECK_ONLY=0
declare -a READS=()
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$EX_USAGE" "option $1 needs a value (try --help)"; }
while [ $# -gt 0 ]; do
  case $1 in
    --reference|--reads|--outdir|--sample|--threads)
      need_value "$@"; opt=$1; val=$2; shift 2 ;;
    --reference=*|--reads=*|--outdir=*|--sample=*|--threads=*)
      opt=${1%%=*}; val=${1#*=}; shift
      [ -n "$val" ] || die "$EX_USAGE" "option $opt needs a value (try --help)" ;;
    -h|--help) usage; exit 0 ;;
    --check-only) CHECK_ONLY=1; shift; continue ;;
    *) die "$EX_USAGE" "unknown argument: $1 (try --help)" ;;
  esac
  case $opt in
    --reference) [ -z "$REFERENCE" ] || die "$EX_USAGE" "--reference given twice"; REFERENCE=$val ;;
    --reads) READS+=("$val") ;;
    --outdir) [ -z "$OUTDIR" ] || die "$EX_USAGE" "--outdir given twice"; OUTDIR=$val ;;
    --sample) SAMPLE=$val ;;
    --threads) THREADS=$val ;;
  esac
done
[ -n "$REFERENCE" ] || die "$EX_USAGE" "missing --reference (try --help)"
[ ${#READS[@]} -ge 1 ] || die "$EX_USAGE" "missing --reads (try --help)"
[ ${#READS[@]} -le 2 ] || die "$EX_USAGE" "--reads given ${#READS[@]} times: one file (single-end) or two (paired-end)"
[ -n "$OUTDIR" ] || [ "$CHECK_ONLY" = 1 ] || die "$EX_USAGE" "missing --outdir (try --help)"
if [ -z "$THREADS" ]; then
  THREADS=$(nproc 2>/dev/null || echo 1)
  [ "$THREADS" -le 4 ] || THREADS=4
fi
[[ $THREADS =~ ^[1-9][0-9]{0,3}$ ]] || die "$EX_USAGE" "--threads must be a positive integer, got '$THREADS'"
if [ -z "$SAMPLE" ]; then # from R1's name: sim_R1.fq.gz -> sim
  SAMPLE=$(basename -- "${READS[0]}")
  SAMPLE=${SAMPLE%.gz}; SAMPLE=${SAMPLE%.fastq}; SAMPLE=${SAMPLE%.fq}
  SAMPLE=$(sed -E 's/([._]R?1)(_001)?$//; s/[^A-Za-z0-9._-]+/_/g; s/^[.]+//' <<<"$SAMPLE" | cut -c1-64)
  [ -n "$SAMPLE" ] || SAMPLE=sample
fi
[[ $SAMPLE =~ ^[A-Za-z0-9._-]{1,64}$ && $SAMPLE != .* ]] \
  || die "$EX_USAGE" "--sample must match [A-Za-z0-9._-]{1,64} and not start with '.', got '$SAMPLE'"
PAIRED=0; [ ${#READS[@]} -eq 2 ] && PAIRED=1

# ---- tools -------------------------------------------------------------------------------
progress 0 check "tools and inputs"
missing=()
for tool in fastp minimap2 samtools bcftools python3 gzip awk; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || die "$EX_TOOL" "missing tool(s): ${missing[*]} (not on PATH; scripts/deps.sh installs the pipeline's tools)"
[ -f "$HERE/pipeline_report/plots.py" ] \
  || die "$EX_TOOL" "missing $HERE/pipeline_report/ (the report's plots): it ships beside pipeline.sh"
PLOTLY=""
for candidate in "$HERE/vendor/plotly.min.js" "$HERE/build/vendor/plotly.min.js"; do
  [ -f "$candidate" ] && { PLOTLY=$candidate; break; }
done

# ---- inputs ------------------------------------------------------------------------------
is_gzip() { [ "$(head -c2 -- "$1" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; }
check_file() { # check_file WHAT PATH
  [ -e "$2" ] || die "$EX_INPUT" "$1 not found: $2"
  [ -f "$2" ] || die "$EX_INPUT" "$1 is not a regular file: $2"
  [ -r "$2" ] || die "$EX_INPUT" "$1 is not readable: $2"
  [ -s "$2" ] || die "$EX_INPUT" "$1 is empty: $2"
}
head_lines() { # head_lines N PATH: the first N lines, decompressed if gzip (never fails)
  { if is_gzip "$2"; then gzip -cd -- "$2" 2>/dev/null; else cat -- "$2"; fi || true; } | head -n "$1" || true
}
check_fastq() { # check_fastq PATH: the first records parse, sequence and quality lengths agree
  local f=$1 n=0 h s p q
  while IFS= read -r h && IFS= read -r s && IFS= read -r p && IFS= read -r q; do
    h=${h%$'\r'} s=${s%$'\r'} p=${p%$'\r'} q=${q%$'\r'}
    n=$((n + 1))
    [[ $h == @?* ]] || die "$EX_INPUT" "reads file is not FASTQ (record $n does not start with '@'): $f"
    [[ $s =~ ^[A-Za-z.*-]*$ ]] || die "$EX_INPUT" "reads file is not FASTQ (record $n has no valid sequence line): $f"
    [[ $p == +* ]] || die "$EX_INPUT" "reads file is not FASTQ (record $n has no '+' line): $f"
    [ ${#s} -eq ${#q} ] || die "$EX_INPUT" "reads file is not valid FASTQ (record $n: sequence length ${#s} != quality length ${#q}): $f"
  done < <(head_lines 40 "$f")
  if [ "$n" -eq 0 ]; then
    if is_gzip "$f" && [ "$(head_lines 1 "$f" | wc -c)" -eq 0 ]; then
      die "$EX_INPUT" "reads file is gzip but decompresses to nothing (corrupt or empty): $f"
    fi
    die "$EX_INPUT" "reads file is not FASTQ (no complete record): $f"
  fi
}
# A reference's sequence letters: the IUPAC nucleotide codes, either case. The API's upload
# check (pipeq/inputs/checks.py, REFERENCE_BASES and FASTA_LINES_CHECKED) is the same, so an
# accepted upload passes here; a test keeps the two equal.
readonly REFERENCE_BASES=ACGTURYSWKMBDHVN FASTA_LINES_CHECKED=500 MAX_LINE=65536
check_fasta() { # check_fasta PATH: a whole gzip stream; the first lines parse as FASTA
  local f=$1 problem
  if is_gzip "$f" && ! gzip -t -- "$f" 2>/dev/null; then
    die "$EX_INPUT" "reference is a truncated or corrupt gzip file: $f"
  fi
  problem=$(head_lines $((FASTA_LINES_CHECKED + 1)) "$f" | sed 's/\r$//' | awk -v want="$FASTA_LINES_CHECKED" \
    -v bases="$REFERENCE_BASES" -v max="$MAX_LINE" '
    function bad(why) { print why; refused = 1; exit }
    BEGIN { ok = "^[" bases tolower(bases) "]*$" }
    NR > want { more = 1; exit }
    length($0) > max { bad("line " NR " is longer than " max " characters") }
    NR == 1 && /^@/ { bad("it looks like FASTQ: records start with @") }
    NR == 1 && !/^>/ { bad("the first line does not start with >") }
    /^>/ {
      if (seqs && !n) bad("sequence " seqs " has no bases")
      if (length($0) < 2) bad("line " NR ": a header must name the sequence")
      seqs++; n = 0; next
    }
    $0 !~ ok { bad("line " NR ": the sequence has characters that are not IUPAC nucleotide codes (" bases ")") }
    { n += length($0) }
    END { if (!refused && !more && !n) print "sequence " seqs " has no bases" }' || true)
  [ -z "$problem" ] || die "$EX_INPUT" "reference is not FASTA ($problem): $f"
}

check_file "reference" "$REFERENCE"
check_fasta "$REFERENCE"
for i in "${!READS[@]}"; do
  check_file "reads file $((i + 1))" "${READS[$i]}"
  check_fastq "${READS[$i]}"
done
if [ "$PAIRED" = 1 ] && [ "${READS[0]}" -ef "${READS[1]}" ]; then
  die "$EX_INPUT" "the two --reads are the same file: ${READS[0]}"
fi
# One full read of each reads file: a truncated upload (cut gzip stream, partial last record)
# or paired files of different lengths would otherwise pass fastp silently with partial data.
count_lines() { # awk, not wc -l: a last line without a newline counts too
  if is_gzip "$1"; then gzip -cd -- "$1" 2>/dev/null | awk 'END { print NR }'; else awk 'END { print NR }' "$1"; fi
}
declare -a RECORDS=()
for i in "${!READS[@]}"; do
  f=${READS[$i]}
  if ! lines=$(count_lines "$f"); then
    die "$EX_INPUT" "reads file is a truncated or corrupt gzip file: $f"
  fi
  [ $((lines % 4)) -eq 0 ] || die "$EX_INPUT" "reads file has $lines lines, not a multiple of 4 (truncated, or not 4-line FASTQ): $f"
  RECORDS[$i]=$((lines / 4))
done
if [ "$PAIRED" = 1 ] && [ "${RECORDS[0]}" != "${RECORDS[1]}" ]; then
  die "$EX_INPUT" "paired reads files differ in length: ${RECORDS[0]} records in ${READS[0]}, ${RECORDS[1]} in ${READS[1]}"
fi
if [ "$CHECK_ONLY" = 1 ]; then log "tools and inputs are fine"; exit 0; fi

# absolute input paths, then work inside the outdir only
abspath() { (cd -- "$(dirname -- "$1")" && printf '%s/%s\n' "$(pwd -P)" "$(basename -- "$1")"); }
REFERENCE=$(abspath "$REFERENCE")
for i in "${!READS[@]}"; do READS[$i]=$(abspath "${READS[$i]}"); done
mkdir -p -- "$OUTDIR" 2>/dev/null || die "$EX_INPUT" "cannot create --outdir: $OUTDIR"
[ -d "$OUTDIR" ] && [ -w "$OUTDIR" ] || die "$EX_INPUT" "--outdir is not a writable directory: $OUTDIR"
OUTDIR=$(cd -- "$OUTDIR" && pwd -P)
WORK=$OUTDIR/work
rm -rf -- "$WORK"
rm -f -- "$OUTDIR/report.json" "$OUTDIR/report.html" # never leave a stale report after a failed re-run
mkdir -p -- "$WORK/tmp"
export TMPDIR=$WORK/tmp
cd -- "$OUTDIR"
T_START=$(now_ms)
log "sample=$SAMPLE paired=$PAIRED threads=$THREADS outdir=$OUTDIR"

# ---- reference ---------------------------------------------------------------------------
progress 2 reference "prepare and index (samtools faidx)"
REF=$WORK/ref.fa
if is_gzip "$REFERENCE"; then
  gzip -cd -- "$REFERENCE" >"$REF" || die "$EX_INPUT" "reference is not a readable gzip file: $REFERENCE"
else
  ln -s -- "$REFERENCE" "$REF"
fi
samtools faidx "$REF" >&2 || die "$EX_INPUT" "reference is not a valid FASTA (samtools faidx failed, see above): $REFERENCE"
[ -s "$REF.fai" ] || die "$EX_INPUT" "reference has no sequences: $REFERENCE"

# ---- QC / trimming -----------------------------------------------------------------------
progress 5 qc "fastp $([ "$PAIRED" = 1 ] && echo paired-end || echo single-end)"
FASTP_THREADS=$THREADS; [ "$FASTP_THREADS" -le 16 ] || FASTP_THREADS=16
if [ "$PAIRED" = 1 ]; then
  TRIMMED=("$WORK/trimmed_R1.fq.gz" "$WORK/trimmed_R2.fq.gz")
  fastp -i "${READS[0]}" -I "${READS[1]}" -o "${TRIMMED[0]}" -O "${TRIMMED[1]}" \
    --detect_adapter_for_pe --dont_eval_duplication -z 1 -w "$FASTP_THREADS" -j fastp.json -h fastp.html \
    -R "$SAMPLE fastp report" >&2
else
  TRIMMED=("$WORK/trimmed.fq.gz")
  fastp -i "${READS[0]}" -o "${TRIMMED[0]}" \
    --dont_eval_duplication -z 1 -w "$FASTP_THREADS" -j fastp.json -h fastp.html -R "$SAMPLE fastp report" >&2
fi
# fastp.html loads plotly from the internet; point it at the pinned copy beside it instead
FASTP_OFFLINE=0
if [ -n "$PLOTLY" ]; then
  cp -- "$PLOTLY" plotly.min.js
  if PYTHONPATH=$HERE python3 -c 'import sys; from pipeline_report import fastp_html; sys.exit(0 if fastp_html.make_offline("fastp.html") else 1)'; then
    FASTP_OFFLINE=1
  else
    rm -f plotly.min.js
    log "fastp.html: its plotly script tag was not found; left loading plotly from the internet"
  fi
else
  log "fastp.html loads plotly from the internet: no local copy (scripts/plotly.sh makes one)"
fi

# ---- alignment ---------------------------------------------------------------------------
progress 20 align "minimap2 -ax sr | samtools sort"
# -v 2: warnings and errors only, not the per-batch [M::...] lines
minimap2 -ax sr -v 2 -t "$THREADS" -R "@RG\tID:$SAMPLE\tSM:$SAMPLE\tPL:ILLUMINA" "$REF" "${TRIMMED[@]}" \
  | samtools sort -@ "$THREADS" -m 256M -T "$WORK/tmp/sort" -o "$SAMPLE.bam" - >&2

# ---- index and stats ---------------------------------------------------------------------
progress 50 stats "samtools index, flagstat, stats, coverage"
samtools index -@ "$THREADS" "$SAMPLE.bam" >&2
samtools flagstat -@ "$THREADS" "$SAMPLE.bam" >"$SAMPLE.flagstat.txt"
samtools stats -@ "$THREADS" "$SAMPLE.bam" >"$SAMPLE.stats.txt"
samtools coverage "$SAMPLE.bam" >"$SAMPLE.coverage.tsv"
samtools idxstats "$SAMPLE.bam" >"$SAMPLE.idxstats.tsv"  # for MultiQC

# ---- variant calling ---------------------------------------------------------------------
progress 60 call "bcftools mpileup | bcftools call -mv"
bcftools mpileup --threads "$THREADS" -f "$REF" -a FORMAT/AD,FORMAT/DP -Ou "$SAMPLE.bam" \
  | bcftools call --threads "$THREADS" -mv -Oz -o "$SAMPLE.vcf.gz" >&2
if ! bcftools index -t -f "$SAMPLE.vcf.gz" >&2 2>/dev/null; then
  bcftools index -c -f "$SAMPLE.vcf.gz" >&2 # contigs > 512 Mbp need CSI
fi
# for MultiQC (and people): with the reference, so indel context and ts/tv are counted
bcftools stats -F "$REF" -s - "$SAMPLE.vcf.gz" >"$SAMPLE.bcftools_stats.txt"
bcftools query -f '%CHROM\t%POS\t%REF\t%ALT\t%QUAL\t%TYPE\t[%GT]\t[%DP]\n' "$SAMPLE.vcf.gz" >"$WORK/variants.tsv"

# ---- report ------------------------------------------------------------------------------
progress 95 report "report.json, report.html"
VERSIONS=$(
  printf 'fastp\t%s\n' "$(fastp --version 2>&1 | awk 'NR==1{print $2}')"
  printf 'minimap2\t%s\n' "$(minimap2 --version 2>&1 | awk 'NR==1')"
  printf 'samtools\t%s\n' "$(samtools --version | awk 'NR==1{print $2}')"
  printf 'bcftools\t%s\n' "$(bcftools --version | awk 'NR==1{print $2}')"
)
DURATIONS=$(for i in "${!STAGE_NAMES[@]}"; do printf '%s\t%s\n' "${STAGE_NAMES[$i]}" "${STAGE_SECONDS[$i]}"; done)
export P_SAMPLE=$SAMPLE P_PAIRED=$PAIRED P_THREADS=$THREADS P_VERSIONS=$VERSIONS P_DURATIONS=$DURATIONS \
  P_REFERENCE=$REFERENCE P_READS=$(printf '%s\n' "${READS[@]}") P_WORK=$WORK P_FAI=$REF.fai \
  P_FASTP_OFFLINE=$FASTP_OFFLINE P_ELAPSED_MS=$(( $(now_ms) - T_START ))
PYTHONPATH=$HERE python3 - <<'PY'
import html, json, os, time
from pipeline_report import plots

env = os.environ
sample = env["P_SAMPLE"]
work = env["P_WORK"]

def pairs(text):
    return [line.split("\t", 1) for line in text.splitlines() if "\t" in line]

fp = json.load(open("fastp.json"))
before = fp["summary"]["before_filtering"]
after = fp["summary"]["after_filtering"]

sn = {}
for line in open(f"{sample}.stats.txt"):
    if line.startswith("SN\t"):
        _, key, value = line.rstrip("\n").split("\t")[:3]
        sn[key.rstrip(":")] = value
total = int(sn.get("raw total sequences", 0))
mapped = int(sn.get("reads mapped", 0))
percent_mapped = round(100.0 * mapped / total, 2) if total else 0.0
properly_paired = round(100.0 * int(sn.get("reads properly paired", 0)) / total, 2) if total else 0.0

contigs = []
with open(f"{sample}.coverage.tsv") as fh:
    header = fh.readline().lstrip("#").split()
    for line in fh:
        row = dict(zip(header, line.split()))
        length = int(row["endpos"]) - int(row["startpos"]) + 1
        contigs.append({"name": row["rname"], "length": length, "reads": int(row["numreads"]),
                        "covered_bases": int(row["covbases"]), "mean_depth": float(row["meandepth"])})
genome = sum(c["length"] for c in contigs)
mean_depth = round(sum(c["mean_depth"] * c["length"] for c in contigs) / genome, 2) if genome else 0.0
breadth = round(100.0 * sum(c["covered_bases"] for c in contigs) / genome, 2) if genome else 0.0

variants = []
for line in open(os.path.join(work, "variants.tsv")):
    chrom, pos, ref, alt, qual, vtype, gt, dp = line.rstrip("\n").split("\t")
    variants.append({"chrom": chrom, "pos": int(pos), "ref": ref, "alt": alt,
                     "qual": None if qual == "." else float(qual), "type": vtype, "gt": gt, "dp": dp})
n_snps = sum(1 for v in variants if v["type"] == "SNP")
n_indels = sum(1 for v in variants if v["type"] == "INDEL")

versions = dict(pairs(env["P_VERSIONS"]))
durations = {k: round(int(v) / 1000.0, 3) for k, v in pairs(env["P_DURATIONS"])}
paired = env["P_PAIRED"] == "1"
vcf = f"{sample}.vcf.gz"
vcf_index = vcf + (".tbi" if os.path.exists(vcf + ".tbi") else ".csi")

# the plots (pipeline_report/plots.py): timed on their own, the figure docs/pipeline.md gives
t_plots = time.monotonic()
fai = [line.split("\t")[:2] for line in open(env["P_FAI"])]
figures = plots.build(sample=sample, fastp=fp, stats_path=f"{sample}.stats.txt", bam=f"{sample}.bam",
                      contigs=[(name, int(length)) for name, length in fai], work=work, mean_depth=mean_depth,
                      mean_depths={c["name"]: c["mean_depth"] for c in contigs},
                      covered_bases=sum(c["covered_bases"] for c in contigs), paired=paired, variants=variants)
plots.write_json(figures, "plots.json")
plots_html = plots.section_html(figures)
plots_seconds = round(time.monotonic() - t_plots, 3)
fastp_offline = env["P_FASTP_OFFLINE"] == "1"

warnings = []
if after["total_reads"] == 0:
    warnings.append("no reads passed QC")
elif percent_mapped < 50:
    warnings.append(f"only {percent_mapped} % of reads mapped: is it the right reference?")
if genome and mean_depth < 5:
    warnings.append(f"mean depth {mean_depth}x is too low for reliable calls")

report = {
    "sample": sample,
    "reads_before": before["total_reads"],
    "reads_after": after["total_reads"],
    "percent_mapped": percent_mapped,
    "mean_depth": mean_depth,
    "variants": len(variants),
    "snps": n_snps,
    "indels": n_indels,
    "paired": paired,
    "bases_before": before["total_bases"],
    "bases_after": after["total_bases"],
    "q30_rate_after": after.get("q30_rate"),
    "percent_properly_paired": properly_paired if paired else None,
    "breadth_1x": breadth,
    "reference_length": genome,
    "contigs": contigs,
    "inputs": {"reference": os.path.basename(env["P_REFERENCE"]),
               "reads": [os.path.basename(p) for p in env["P_READS"].splitlines()]},
    "threads": int(env["P_THREADS"]),
    "tools": versions,
    "durations_seconds": durations,
    "elapsed_seconds": round(int(env["P_ELAPSED_MS"]) / 1000.0, 3),
    "plots_seconds": plots_seconds,
    "plots": [f.id for f in figures],
    "fastp_html_offline": fastp_offline,
    "warnings": warnings,
    "files": {"bam": f"{sample}.bam", "bai": f"{sample}.bam.bai", "vcf": vcf, "vcf_index": vcf_index,
              "fastp_json": "fastp.json", "fastp_html": "fastp.html",
              "report_json": "report.json", "report_html": "report.html", "plots_json": "plots.json",
              "idxstats": f"{sample}.idxstats.tsv", "bcftools_stats": f"{sample}.bcftools_stats.txt",
              "multiqc_config": "multiqc_config.yaml", **({"plotly": "plotly.min.js"} if fastp_offline else {})},
}
tmp = "report.json.tmp"
with open(tmp, "w") as fh:
    json.dump(report, fh, indent=2)
    fh.write("\n")
os.replace(tmp, "report.json")

e = html.escape
def table(rows, head=None):
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)

summary_rows = [
    ("Sample", sample), ("Layout", "paired-end" if paired else "single-end"),
    ("Reads before QC", f"{report['reads_before']:,}"), ("Reads after QC", f"{report['reads_after']:,}"),
    ("Reads kept", f"{100.0 * report['reads_after'] / report['reads_before']:.2f} %" if report["reads_before"] else "n/a"),
    ("Mapped", f"{percent_mapped:.2f} %"),
    ("Mean depth", f"{mean_depth:.2f}x"), ("Breadth (>= 1x)", f"{breadth:.2f} %"),
    ("Variants", f"{len(variants)} ({n_snps} SNPs, {n_indels} indels)"),
    ("Reference", f"{report['inputs']['reference']} ({genome:,} bp, {len(contigs)} contigs)"),
    ("Reads", ", ".join(report["inputs"]["reads"])),
]
shown = variants[:500]
doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(sample)} - pipeq report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
td, th {{ padding: .2em .8em; border-bottom: 1px solid #eee; text-align: left; }}
th {{ background: #f4f4f4; }} td:not(:first-child) {{ font-variant-numeric: tabular-nums; }}
.muted {{ color: #777; }} .warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: .4em .8em; }}
figure {{ margin: 1.2em 0; overflow-x: auto; }} figure svg {{ display: block; width: 100%; max-width: 720px; min-width: 30em; height: auto; }}
figcaption {{ color: #555; font-size: .92em; max-width: 50em; margin-top: .3em; }}
@media print {{ body {{ max-width: none; margin: 0; }} figure {{ break-inside: avoid; }} figure svg {{ min-width: 0; }} h2 {{ break-after: avoid; }} }}
</style></head><body>
<h1>Variant calling report: {e(sample)}</h1>
{"".join(f'<p class="warn">Warning: {e(w)}</p>' for w in warnings)}
<h2>Summary</h2>
{table(summary_rows)}
<h2>Plots</h2>
<section id="plots">
{plots_html}
</section>
<h2>Coverage by contig</h2>
{table([(c["name"], f'{c["length"]:,}', f'{c["reads"]:,}', f'{c["mean_depth"]:.2f}',
          f'{100.0 * c["covered_bases"] / c["length"]:.2f} %' if c["length"] else "n/a") for c in contigs],
       ["contig", "length", "reads", "mean depth", "breadth"])}
<h2>Variants</h2>
<p class="muted">{len(variants)} records in {e(vcf)}{"; the first 500 are shown" if len(variants) > 500 else ""}.</p>
{table([(v["chrom"], v["pos"], v["ref"], v["alt"], "." if v["qual"] is None else f'{v["qual"]:.1f}', v["type"], v["gt"], v["dp"]) for v in shown],
       ["chrom", "pos", "ref", "alt", "qual", "type", "genotype", "depth"])}
<h2>Files</h2>
{table([(k, v) for k, v in report["files"].items()])}
<p class="muted">Read QC details: fastp.html in the same folder{" (its charts use plotly.min.js beside it: they work offline)" if fastp_offline else " (its charts load plotly from the internet: pipeline.sh had no local copy; scripts/plotly.sh makes one)"}.
MultiQC reads this folder: multiqc -c multiqc_config.yaml . (docs/pipeline.md).</p>
<h2>Run</h2>
{table([(k, f"{v:.2f} s") for k, v in durations.items()] + [("total", f"{report['elapsed_seconds']:.2f} s")], ["stage", "duration"])}
{table(sorted(versions.items()), ["tool", "version"])}
</body></html>
"""
with open("report.html.tmp", "w") as fh:
    fh.write(doc)
os.replace("report.html.tmp", "report.html")
PY
# MultiQC: one row per sample. Its modules name a sample after a file (sim.stats.txt ->
# sim.stats) or after fastp's report title ("sim fastp report"); these patterns cut both back
# to the sample name. The same in every job, so any job's copy serves a run over many.
cat >multiqc_config.yaml <<'YAML'
# MultiQC settings for pipeq job folders (written by pipeline.sh, the same in every job).
#   multiqc -c multiqc_config.yaml .        or, over many jobs (docs/pipeline.md):
#   multiqc -c jobs/<any>/multiqc_config.yaml jobs/*/
extra_fn_clean_exts:
  - {type: regex, pattern: ' fastp report$'}
  - {type: regex, pattern: '\.(stats|idxstats|coverage|flagstat|bcftools_stats)(\.(txt|tsv))?$'}
YAML

rm -rf -- "$WORK"
STAGE=done
echo "PROGRESS 100 done"
