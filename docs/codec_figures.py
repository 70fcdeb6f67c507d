# The classic codecs on the digits test split (README, Compression): zcat data/digits.csv.gz | tail -n 447 > digits-test.csv,
# then python3 codec_figures.py in that folder (needs gzip, bzip2, xz, zstd and cwebp; PNGs are written with zlib level 9).
import zlib, struct, subprocess, os, sys
rows=[l.strip().split(',') for l in open('digits-test.csv') if l.strip()]
imgs=[bytes(int(v) for v in r[:64]) for r in rows]
raw=b''.join(imgs)
open('raw.bin','wb').write(raw)
# The split as an IDX images file, for `armory compress`.
open('digits-test-idx3-ubyte','wb').write(struct.pack('>IIII',0x803,len(imgs),8,8)+raw)
N=len(imgs); D=64
def png(w,h,pix):
    def chunk(t,d): return struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d)&0xffffffff)
    rowsb=b''.join(b'\x00'+pix[y*w:(y+1)*w] for y in range(h))
    return b'\x89PNG\r\n\x1a\n'+chunk(b'IHDR',struct.pack('>IIBBBBB',w,h,8,0,0,0,0))+chunk(b'IDAT',zlib.compress(rowsb,9))+chunk(b'IEND',b'')
def pgm(w,h,pix): return b'P5\n%d %d\n255\n'%(w,h)+pix
os.makedirs('png',exist_ok=True); os.makedirs('pgm',exist_ok=True)
tot_png=0; tot_webp=0
for i,im in enumerate(imgs):
    p=png(8,8,im); tot_png+=len(p); open('png/%03d.png'%i,'wb').write(p)
    open('pgm/%03d.pgm'%i,'wb').write(pgm(8,8,im))
    subprocess.run(['cwebp','-quiet','-lossless','-z','9','pgm/%03d.pgm'%i,'-o','one.webp'],check=True)
    tot_webp+=os.path.getsize('one.webp')
# grid: 21 x 22 tiles (462 slots, last empty tiles zero)
cols=21; rws=(N+cols-1)//cols
W,H=cols*8,rws*8
g=bytearray(W*H)
for i,im in enumerate(imgs):
    r,c=divmod(i,cols)
    for y in range(8):
        g[(r*8+y)*W+c*8:(r*8+y)*W+c*8+8]=im[y*8:(y+1)*8]
gp=png(W,H,bytes(g)); open('grid.png','wb').write(gp)
open('grid.pgm','wb').write(pgm(W,H,bytes(g)))
subprocess.run(['cwebp','-quiet','-lossless','-z','9','grid.pgm','-o','grid.webp'],check=True)
res={'PNG per image (zlib 9)':tot_png,'PNG grid (zlib 9)':len(gp),'WebP lossless per image (-z 9)':tot_webp,'WebP lossless grid (-z 9)':os.path.getsize('grid.webp')}
for name,cmd in [('gzip -9',['gzip','-9c','raw.bin']),('bzip2 -9',['bzip2','-9c','raw.bin']),('xz -9e',['xz','-9e','-c','raw.bin']),('zstd -19',['zstd','-19','-c','-q','raw.bin'])]:
    res[name]=len(subprocess.run(cmd,capture_output=True,check=True).stdout)
print('raw bytes',len(raw))
for k,v in res.items(): print(f'| {k} | {v:,} | {v*8/(N*D):.4f} |')
